"""A local SparkSession with the window engine's jar, for the pure cores that run in the JVM (no services)."""

from __future__ import annotations

import os
import sys

import pytest
from pyspark import SparkContext
from pyspark.sql import SparkSession

from cdcf.engine import engine_jar
from cdcf.settings import PROJECT_ROOT
from streaming.job import state_store_conf


@pytest.fixture(scope="module")
def spark():
    """local[2], UTC, two state partitions, the engine's jar (compiled into the ignored cache if needed), and a JVM
    that compiles with C1 only."""
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    _fresh_jvm()  # another test's JVM has other jars on its classpath
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("cdcf-unit")
        .config("spark.jars", str(engine_jar(PROJECT_ROOT / ".stack" / "cache" / "engine")))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # a JVM of a few minutes: C1 alone compiles what it runs for 28 % less CPU than C1 then C2 (4 twin
        # histories: 86 s of CPU against 119 s, 67 s against 74 s wall on 2 idle cores)
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
    )
    for key, value in state_store_conf(partitions=2, memory_mb=128).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    _fresh_jvm()


def _fresh_jvm() -> None:
    """Stop the context and the py4j gateway, so that the next session starts a JVM with its own classpath (a
    running JVM only gives jars added later to the tasks, not to py4j)."""
    if SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.stop()
    if SparkContext._gateway is not None:
        SparkContext._gateway.shutdown()
        process = getattr(SparkContext._gateway, "proc", None)
        if process is not None:
            process.terminate()
            process.wait(30)
        SparkContext._gateway = None
        SparkContext._jvm = None
