"""Feast's repo configuration, built from the settings (SQL registry and offline store in Postgres, Redis)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.redis_clients import Role, credentials
from cdcf.settings import PROJECT_ROOT, Settings, default_home, write_private

REPO_PATH = PROJECT_ROOT / "feature_repo"


def repo_config(settings: Settings, role: Role = "reader") -> dict:
    """The content of feature_store.yaml for these settings, its Redis user ``role``'s: Feast's readers (get_online_
    features, `feast serve`) sign in as the reader, whom Redis refuses writes (push endpoints included)."""
    user, password = credentials(settings, role)
    return {
        "project": settings.feast_project,
        "provider": "local",
        "registry": {
            "registry_type": "sql",
            "path": settings.sqlalchemy_url(settings.registry_db),
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
        },
        "online_store": {
            "type": "redis",
            "connection_string": f"{settings.redis_host}:{settings.redis_port},username={user},password={password}",
        },
        "offline_store": {
            "type": "postgres",
            "host": settings.pg_host,
            "port": settings.pg_port,
            "database": settings.offline_db,
            "db_schema": "public",
            "user": settings.feast_user,
            "password": settings.feast_password.get_secret_value(),
            "sslmode": settings.pg_sslmode,
            "sslrootcert_path": settings.pg_tls["sslrootcert"],
        },
        "entity_key_serialization_version": 3,
        **(
            {
                "batch_engine": {
                    "type": "spark.engine",
                    "spark_conf": {
                        "spark.master": settings.spark_master,
                        "spark.pyspark.python": sys.executable,
                        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
                    },
                }
            }
            if settings.feast_batch_engine == "spark.engine"
            else {}
        ),
    }


def write_repo_config(settings: Settings, role: Role = "reader") -> Path:
    """Write ``<home>/conf/feature_store.yaml`` (mode 0600), or ``feature_store.writer.yaml`` for the writer (`feast
    apply`). For the default home, ``feature_repo/`` links to the reader's, so `feast feature-views list` and `feast
    serve` work in that folder as they are."""
    path = settings.paths.conf / ("feature_store.yaml" if role == "reader" else f"feature_store.{role}.yaml")
    write_private(
        path,
        "# Written by `cdcf up` from the settings; edit the settings, not this file.\n"
        + yaml.safe_dump(repo_config(settings, role), sort_keys=False),
    )
    link = REPO_PATH / "feature_store.yaml"
    if role == "reader" and settings.home.resolve() == default_home().resolve() and not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(path)
    return path


OLD_MIRROR = ("stream_entities", "stream_users", "stream_transactions", "stream_sessions", "stream_reviews")


def create_offline_tables(settings: Settings) -> None:
    """Create the offline store table of every feature view (idempotent)."""
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            for view in decl.ALL_VIEWS:
                cur.execute(decl.offline_table_ddl(view))
            # the row mirror of the streaming job's first design (its state now lives in Spark's state store)
            cur.execute(f"DROP TABLE IF EXISTS {', '.join(OLD_MIRROR)}")


def feature_store(settings: Settings, role: Role = "reader"):
    """A FeatureStore on the repo, configured from the settings (no file needed), signed in to Redis as ``role``."""
    from feast import FeatureStore, RepoConfig

    return FeatureStore(config=RepoConfig(repo_path=REPO_PATH, **repo_config(settings, role)), repo_path=REPO_PATH)
