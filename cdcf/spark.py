"""SparkSession factory: the pyspark wheel plus the cached spark-sql-kafka and JDBC jars (no download at start) and
the window engine's jar (compiled once per source version)."""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from cdcf.engine import engine_jar
from cdcf.jars import jar_files
from cdcf.settings import Settings

LOOPBACK = "127.0.0.1"


def on_this_machine(master: str) -> bool:
    """A master whose executors all run here (local mode, or a standalone master on loopback): Spark binds its
    ports to ``SPARK_LOCAL_IP``, and its UI to every interface without it."""
    return master.startswith("local") or urlparse(master).hostname in (LOOPBACK, "localhost")


def auth_conf(settings: Settings) -> dict[str, str]:
    """spark.authenticate with the settings' secret: a master, worker or executor without it refuses the job, and
    a job without it is refused (the UI redacts the secret)."""
    return {"spark.authenticate": "true", "spark.authenticate.secret": settings.spark_secret.get_secret_value()}


def spark_defaults(settings: Settings) -> str:
    """A spark-defaults.conf for the standalone master and workers, holding the secret (write it private)."""
    return "".join(f"{key} {value}\n" for key, value in auth_conf(settings).items())


def spark_session(
    settings: Settings, app_name: str, master: str | None = None, conf: dict[str, str] | None = None
) -> SparkSession:
    """A session for our jobs: UTC everywhere, few shuffle partitions, the venv's Python on the workers; ``conf``
    overrides or adds settings."""
    # Python workers must import pandas/feast/cdcf: point them at this interpreter (else they start the python3 on
    # PATH, without our packages).
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    master = master or settings.spark_master
    if on_this_machine(master):  # the driver, its UI and block manager listen on loopback, not on the LAN
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    engine = engine_jar(settings.paths.cache / "engine", settings.javac)
    jars = ",".join(str(j) for j in [*jar_files(settings, "spark"), engine])
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", jars)
        .config("spark.sql.shuffle.partitions", settings.spark_shuffle_partitions)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.warehouse.dir", str(settings.paths.data / "spark-warehouse"))
    )
    for key, value in auth_conf(settings).items():  # set in the JVM through py4j: not on any command line
        builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
