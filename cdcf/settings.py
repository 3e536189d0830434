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
from urllib.parse import quote, urlencode

from psycopg2.extensions import make_dsn
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdcf.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# what a process the stack starts takes from its starter's environment besides the settings (Settings.environment):
# where programs, home and temporary files are, the locale and zone, the JDK, the TLS trust store, and the OpenBLAS
# core type that some processors need for numpy to compute right
SYSTEM_VARIABLES = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "JAVA_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)
SECRET_FIELDS = (
    "app_password",
    "debezium_password",
    "feast_password",
    "redis_password",
    "redis_reader_password",
    "connect_password",
    "spark_secret",
    "scoring_token",
    "feature_server_token",
    "kafka_admin_password",
    "kafka_capture_password",
    "kafka_reader_password",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDCF_", extra="forbid", frozen=True)

    home: Path = Field(PROJECT_ROOT / ".stack", description="State folder: jar cache, data, logs, pid files.")
    secrets_dir: Path | None = Field(
        None,
        description="A folder of secret files, one per secret field named "
        "cdcf_<field>, as Docker secrets mount them (compose: /run/secrets); the "
        "environment and <home>/secrets.env come first.",
    )
    pg_host: str = Field("127.0.0.1", description="PostgreSQL address (the local stack binds it).")
    redis_host: str = Field("127.0.0.1", description="Redis address (the local stack binds it).")
    kafka_host: str = Field("127.0.0.1", description="Kafka broker address (the local stack binds it).")
    connect_host: str = Field("127.0.0.1", description="Kafka Connect REST address (the local stack binds it).")

    pg_port: int = Field(5432, description="PostgreSQL port.")
    pg_sslmode: Literal["require", "verify-ca", "verify-full"] = Field(
        "verify-full",
        description="TLS of every client's TCP connection to PostgreSQL (the server refuses any "
        "without TLS); verify-full checks the server's certificate against pg_ca_file and its name.",
    )
    pg_ca_file: Path | None = Field(
        None,
        description="The CA that signed PostgreSQL's certificate; default: the one "
        "the local stack generates, <home>/conf/tls/ca.crt.",
    )
    pg_version: int = Field(15, description="Major version of the Debian PostgreSQL packages.")
    pg_cluster: str = Field("cdcf", description="Name of the Debian cluster the stack creates and owns.")
    app_db: str = Field("app", description="Source database captured by Debezium (docs/semantics.md#source).")
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
    redis_user: str = Field(
        "cdcf-writer", description="Redis ACL user of the pipeline's writers (the default user is off)."
    )
    redis_password: SecretStr = Field(description="Password of redis_user.")
    redis_reader_user: str = Field(
        "cdcf-reader",
        description="Redis ACL user of every reader (Feast, `feast serve`, "
        "the scoring service): it can read features and write nothing.",
    )
    redis_reader_password: SecretStr = Field(description="Password of redis_reader_user.")
    redis_max_memory_mb: int = Field(
        2048, ge=16, description="Redis maxmemory (noeviction: a full Redis refuses writes rather than drop features)."
    )

    kafka_port: int = Field(9092, description="Kafka broker port.")
    kafka_controller_port: int = Field(9093, description="Kafka KRaft controller port.")
    kafka_cluster_id: str = Field(
        "-u-DZTw6VyiQ_hdR7RnmpA",
        min_length=22,
        max_length=22,
        description="KRaft cluster id (base64 UUID) used when formatting storage.",
    )
    kafka_heap: str = Field("512m", description="Kafka broker -Xmx.")
    kafka_admin_user: str = Field(
        "cdcf-admin",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Kafka's super user (SASL/SCRAM): the broker itself, the stack's tools, the operator.",
    )
    kafka_admin_password: SecretStr = Field(description="Password of kafka_admin_user.")
    kafka_capture_user: str = Field(
        "cdcf-capture",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Kafka user of Connect and Debezium: writes the change topics (ACLs).",
    )
    kafka_capture_password: SecretStr = Field(description="Password of kafka_capture_user.")
    kafka_reader_user: str = Field(
        "cdcf-reader",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Kafka user of the archiver and the streaming job: reads the change topics, writes none (ACLs).",
    )
    kafka_reader_password: SecretStr = Field(description="Password of kafka_reader_user.")
    connect_port: int = Field(8083, description="Kafka Connect REST port.")
    connect_group: str = Field("cdcf-connect", description="Connect worker group id.")
    connect_heap: str = Field("768m", description="Connect worker -Xmx.")
    connect_user: str = Field(
        "cdcf-operator",
        description="The one user of Connect's REST API (HTTP basic auth): "
        "only it can create, change or delete connectors.",
    )
    connect_password: SecretStr = Field(description="Password of connect_user.")
    topic_prefix: str = Field(
        "cdc", pattern=r"^[A-Za-z0-9_-]+$", description="Debezium topic prefix: topics are <prefix>.public.<table>."
    )
    replication_slot: str = Field("cdcf_app", pattern=r"^[a-z0-9_]+$", description="Debezium's replication slot.")
    dead_letter_topic: str = Field("cdc.dead-letter", description="Where undecodable changes go, with the reason.")
    archive_group: str = Field("cdcf-archiver", description="Consumer group of the changelog archiver.")
    archive_workers: int = Field(
        2,
        ge=0,
        description="Processes that decode for the changelog archiver, a batch "
        "each, while it consumes and writes (0: it decodes in its own process).",
    )

    spark_master: str = Field("local[2]", description="Spark master URL for jobs.")
    spark_shuffle_partitions: int = Field(2, ge=1, description="spark.sql.shuffle.partitions (small on 2 cores).")
    stream_state_partitions: int = Field(
        2,
        ge=1,
        description="State partitions of the streaming job (its shuffle partitions): fixed by the "
        "checkpoint at first start, so sized for the cores it will run on (local[2] here; compose: 16). Each "
        "costs a state-store load and commit in every micro-batch, an idle one too.",
    )
    stream_state_memory_mb: int = Field(512, ge=64, description="Memory bound of the job's RocksDB state stores.")
    spark_secret: SecretStr = Field(
        description="spark.authenticate's shared secret: the master, the workers and "
        "every job hold it, and nothing without it joins the cluster."
    )
    stream_online_writes: Literal["packed", "feast-push"] = Field(
        "packed",
        description="How the streaming job writes Redis: its own packed HSETs in Feast's layout (fast), "
        "or Feast's push through each view's push source (slow; the same values).",
    )

    scoring_token: SecretStr = Field(description="Bearer token the scoring service requires (all but /health).")
    feature_server_token: SecretStr = Field(
        description="Bearer token of the proxy in front of `feast serve` in "
        "compose (locally `feast serve` listens on loopback only)."
    )
    feast_batch_engine: Literal["local", "spark.engine"] = Field(
        "local",
        description="Feast's batch engine for `feast materialize`: in process (local), or Spark "
        "(spark.engine, with spark_conf from these settings; Feast 0.67 passes its whole batch_engine block to Spark "
        "and drops spark_conf, so export PYSPARK_PYTHON=.venv/bin/python for its Python workers to find feast).",
    )
    feast_project: str = Field("homelab_ml_platform", description="Feast project name (docs/semantics.md#features).")
    java: str = Field("java", description="Java 17 executable (name on PATH or absolute path).")
    javac: str = Field("javac", description="Java 17 compiler, which builds the streaming window engine once.")
    maven: str = Field("mvn", description="Maven executable, used only while the jar cache is empty.")
    maven_repo_url: str = Field("", description="Maven repository mirror; empty means Maven Central.")
    stream_trigger_ms: int = Field(100, gt=0, description="Micro-batch interval of the streaming job.")
    stream_max_changes_per_batch: int = Field(200_000, gt=0, description="Cap on Kafka records per micro-batch.")
    stream_settle_s: float = Field(
        0.1,
        ge=0,
        description="The streaming job's clock trails the commit time Connect has confirmed in Kafka (its "
        "committed source offset) by this much: a margin for the topics' end offsets, read a moment apart, and for "
        "commit times that are not quite in commit order. Every change waits for the clock, so it adds to freshness.",
    )
    metrics_enabled: bool = Field(
        True,
        description="Export Prometheus metrics and check every emitted feature "
        "row (cdcf.quality); off only to measure what they cost (the benchmark does).",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the processes' Prometheus endpoints (/metrics) "
        "bind: the archiver's, the streaming job's, the model API's (compose: 0.0.0.0).",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        description="Port of a process's /metrics; 0: an ephemeral one, announced to "
        "the local Prometheus in <home>/run/metrics/<job>.json (compose: one per container).",
    )
    prometheus_port: int = Field(
        9090, description="Port of the local stack's Prometheus (alert rules: deploy/prometheus/alerts.yml)."
    )
    alertmanager_port: int = Field(9095, description="Port of the local stack's Alertmanager.")
    start_timeout_s: float = Field(90.0, gt=0, description="Deadline for each service to become healthy.")

    @cached_property
    def paths(self) -> StackPaths:
        return StackPaths(self.home)

    @property
    def pg_tls(self) -> dict[str, str]:
        """libpq's TLS parameters (every TCP client uses TLS)."""
        return {"sslmode": self.pg_sslmode, "sslrootcert": str(self.pg_ca_file or self.paths.pg_ca)}

    def pg_dsn(self, db: str | None = None, *, user: str | None = None) -> str:
        """libpq DSN for ``user`` (default the app role) on ``db`` (default the app database), over TLS."""
        user = user or self.app_user
        password = {
            self.app_user: self.app_password,
            self.debezium_user: self.debezium_password,
            self.feast_user: self.feast_password,
        }[user].get_secret_value()
        return make_dsn(
            host=self.pg_host, port=self.pg_port, dbname=db or self.app_db, user=user, password=password, **self.pg_tls
        )

    def sqlalchemy_url(self, db: str) -> str:
        """URL for Feast's SQL registry (psycopg 3 driver), as the feast role, over TLS."""
        user, pw = quote(self.feast_user, safe=""), quote(self.feast_password.get_secret_value(), safe="")
        return f"postgresql+psycopg://{user}:{pw}@{self.pg_host}:{self.pg_port}/{db}?{urlencode(self.pg_tls)}"

    def jdbc_url(self, db: str) -> str:
        """URL for Spark's JDBC reads (the Postgres driver), over TLS; user and password go apart."""
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{db}?{urlencode(self.pg_tls)}"

    def environment(self) -> dict[str, str]:
        """The whole environment of a process the stack starts (a supervisor and what it runs, a Spark daemon):
        these settings as ``CDCF_*`` variables and the system's basics (``SYSTEM_VARIABLES``), as the starter has
        them; nothing else. A variable that a library set for its own process never reaches one that outlives it:
        importing feast points ``PROMETHEUS_MULTIPROC_DIR`` at a folder that goes with the importer, and a child
        that inherited it fails at its first metric. Secrets are left where the starter read them
        (``<home>/secrets.env``, ``CDCF_SECRETS_DIR``), except those it was given in its environment."""
        env = {name: os.environ[name] for name in SYSTEM_VARIABLES if name in os.environ}
        for name in type(self).model_fields:
            variable, value = f"CDCF_{name.upper()}", getattr(self, name)
            if isinstance(value, SecretStr):
                if variable in os.environ:
                    env[variable] = os.environ[variable]
            elif value is not None:
                env[variable] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

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
        self.tls = self.conf / "tls"
        self.pg_ca = self.tls / "ca.crt"

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


def write_private(path: Path, text: str, group: int | None = None) -> Path:
    """Write a file only its owner can read (0600 from its creation: no moment when others could read a secret),
    or its owner and ``group`` (0640, that group set before anything is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # a file that existed keeps its mode otherwise
        if group is not None:
            os.fchown(fh.fileno(), -1, group)
            os.fchmod(fh.fileno(), 0o640)
        fh.write(text)
    return path


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment and ``<home>/secrets.env``; explain what to do when invalid."""
    home = Path(overrides.get("home") or default_home())
    try:
        return Settings(
            _env_file=home / "secrets.env",  # type: ignore[call-arg]
            _secrets_dir=overrides.get("secrets_dir") or os.environ.get("CDCF_SECRETS_DIR"),
            **overrides,
        )
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
