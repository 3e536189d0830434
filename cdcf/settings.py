"""The one settings object: every address, name, path and secret of the pipeline.

Read from the environment (prefix ``CDCF_``) and from ``<home>/secrets.env``, the file the first ``make up``
writes with random passwords. Defaults match the local stack. Build it once at the entry point and pass it down.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from psycopg2.extensions import make_dsn
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdcf.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECRET_FIELDS = ("app_password", "debezium_password", "feast_password", "redis_password")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDCF_", extra="forbid", frozen=True)

    home: Path = Field(PROJECT_ROOT / ".stack", description="State folder: jar cache, data, logs, pid files.")
    pg_host: str = Field("127.0.0.1", description="PostgreSQL address (the local stack binds it).")
    redis_host: str = Field("127.0.0.1", description="Redis address (the local stack binds it).")
    kafka_host: str = Field("127.0.0.1", description="Kafka broker address (the local stack binds it).")
    connect_host: str = Field("127.0.0.1", description="Kafka Connect REST address (the local stack binds it).")

    pg_port: int = Field(5432, description="PostgreSQL port.")
    pg_version: int = Field(15, description="Major version of the Debian PostgreSQL packages.")
    pg_cluster: str = Field("cdcf", description="Name of the Debian cluster the stack creates and owns.")
    app_db: str = Field("app", description="Source database captured by Debezium (SPEC section 2).")
    app_user: str = Field("app", description="Owner of the source tables; the workload writes as this role.")
    app_password: SecretStr = Field(description="Password of app_user.")
    debezium_user: str = Field("debezium", description="Least-privilege replication role used by Connect.")
    debezium_password: SecretStr = Field(description="Password of debezium_user.")
    publication: str = Field("cdcf_publication", description="Publication over the captured tables.")
    feast_user: str = Field("feast", description="Owner of the Feast registry and offline store databases.")
    feast_password: SecretStr = Field(description="Password of feast_user.")
    registry_db: str = Field("feast_registry", description="Database holding Feast's SQL registry.")
    offline_db: str = Field("feast_offline", description="Database holding the offline store tables.")

    redis_port: int = Field(6379, description="Redis port (online store).")
    redis_password: SecretStr = Field(description="Redis AUTH password.")
    redis_max_memory_mb: int = Field(2048, ge=16, description="Redis maxmemory (noeviction: a full Redis refuses "
                                     "writes rather than drop features).")

    kafka_port: int = Field(9092, description="Kafka broker port.")
    kafka_controller_port: int = Field(9093, description="Kafka KRaft controller port.")
    kafka_cluster_id: str = Field("-u-DZTw6VyiQ_hdR7RnmpA", min_length=22, max_length=22,
                                  description="KRaft cluster id (base64 UUID) used when formatting storage.")
    kafka_heap: str = Field("512m", description="Kafka broker -Xmx.")
    connect_port: int = Field(8083, description="Kafka Connect REST port.")
    connect_group: str = Field("cdcf-connect", description="Connect worker group id.")
    connect_heap: str = Field("768m", description="Connect worker -Xmx.")
    topic_prefix: str = Field("cdc", pattern=r"^[A-Za-z0-9_-]+$",
                              description="Debezium topic prefix: topics are <prefix>.public.<table>.")
    replication_slot: str = Field("cdcf_app", pattern=r"^[a-z0-9_]+$", description="Debezium's replication slot.")
    dead_letter_topic: str = Field("cdc.dead-letter", description="Where undecodable changes go, with the reason.")
    archive_group: str = Field("cdcf-archiver", description="Consumer group of the changelog archiver.")
    archive_workers: int = Field(2, ge=0, description="Processes that decode for the changelog archiver, a batch "
                                 "each, while it consumes and writes (0: it decodes in its own process).")

    spark_master: str = Field("local[2]", description="Spark master URL for jobs.")
    spark_shuffle_partitions: int = Field(2, ge=1, description="spark.sql.shuffle.partitions (small on 2 cores).")
    stream_state_partitions: int = Field(
        4, ge=1, description="State partitions of the streaming job (its shuffle partitions): fixed by the "
        "checkpoint at first start, so sized for the largest cluster it will run on.")
    stream_state_memory_mb: int = Field(512, ge=64, description="Memory bound of the job's RocksDB state stores.")
    stream_online_writes: Literal["packed", "feast-push"] = Field(
        "packed", description="How the streaming job writes Redis: its own packed HSETs in Feast's layout (fast), "
        "or Feast's push through each view's push source (slow; the same values).")

    feast_project: str = Field("homelab_ml_platform", description="Feast project name (SPEC section 3).")
    java: str = Field("java", description="Java 17 executable (name on PATH or absolute path).")
    javac: str = Field("javac", description="Java 17 compiler, which builds the streaming window engine once.")
    maven: str = Field("mvn", description="Maven executable, used only while the jar cache is empty.")
    maven_repo_url: str = Field("", description="Maven repository mirror; empty means Maven Central.")
    stream_trigger_ms: int = Field(100, gt=0, description="Micro-batch interval of the streaming job.")
    stream_max_changes_per_batch: int = Field(200_000, gt=0, description="Cap on Kafka records per micro-batch.")
    stream_settle_s: float = Field(
        0.1, ge=0, description="The streaming job's clock trails the commit time Connect has confirmed in Kafka (its "
        "committed source offset) by this much: a margin for the topics' end offsets, read a moment apart, and for "
        "commit times that are not quite in commit order. Every change waits for the clock, so it adds to freshness.")
    start_timeout_s: float = Field(90.0, gt=0, description="Deadline for each service to become healthy.")

    @cached_property
    def paths(self) -> StackPaths:
        return StackPaths(self.home)

    def pg_dsn(self, db: str | None = None, *, user: str | None = None) -> str:
        """libpq DSN for ``user`` (default the app role) on ``db`` (default the app database)."""
        user = user or self.app_user
        password = {self.app_user: self.app_password, self.debezium_user: self.debezium_password,
                    self.feast_user: self.feast_password}[user].get_secret_value()
        return make_dsn(host=self.pg_host, port=self.pg_port, dbname=db or self.app_db, user=user, password=password)

    def sqlalchemy_url(self, db: str) -> str:
        """URL for Feast's SQL registry (psycopg 3 driver), as the feast role."""
        user, pw = quote(self.feast_user, safe=""), quote(self.feast_password.get_secret_value(), safe="")
        return f"postgresql+psycopg://{user}:{pw}@{self.pg_host}:{self.pg_port}/{db}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.connect_host}:{self.connect_port}"

    @property
    def connect_offsets_topic(self) -> str:
        """Where Connect commits its source offsets (the streaming job's clock reads it)."""
        return f"{self.connect_group}-offsets"


class StackPaths:
    """Where the local stack keeps its files; everything lives under one ignored folder."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.cache = home / "cache"
        self.jars = self.cache / "jars"
        self.m2 = self.cache / "m2"
        self.conf = home / "conf"
        self.data = home / "data"
        self.logs = home / "logs"
        self.run = home / "run"
        self.checkpoint = self.data / "checkpoints" / "engine"
        self.secrets = home / "secrets.env"

    def jar_dir(self, profile: str) -> Path:
        return self.jars / profile

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"


def default_home() -> Path:
    return Path(os.environ.get("CDCF_HOME", PROJECT_ROOT / ".stack"))


def ensure_secrets(home: Path) -> Path:
    """Write ``secrets.env`` with fresh random passwords for every secret not yet there (mode 0600)."""
    path = home / "secrets.env"
    home.mkdir(parents=True, exist_ok=True)
    existing = _read_env_file(path)
    missing = [f for f in SECRET_FIELDS if f"CDCF_{f.upper()}" not in existing]
    if missing:  # created private: no moment when others could read a password
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as fh:
            for field in missing:
                fh.write(f"CDCF_{field.upper()}={secrets.token_urlsafe(24)}\n")
    path.chmod(0o600)
    return path


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment and ``<home>/secrets.env``; explain what to do when invalid."""
    home = Path(overrides.get("home") or default_home())
    try:
        return Settings(_env_file=home / "secrets.env", **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"CDCF_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings ({problems}). Set them in the environment, or run `make up` once so that "
            f"{home / 'secrets.env'} holds the generated passwords."
        ) from exc


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}
