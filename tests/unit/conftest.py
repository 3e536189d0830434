"""A local SparkSession with the window engine's jar, for the pure cores that run in the JVM (no services)."""

from __future__ import annotations

import os
import sys

import pytest
from pyspark.sql import SparkSession

from cdcf.settings import PROJECT_ROOT
from streaming.engine import engine_jar
from streaming.job import state_store_conf


@pytest.fixture(scope="module")
def spark():
    """local[2], UTC, two state partitions, the engine's jar (compiled into the ignored cache if needed)."""
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    active = SparkSession.getActiveSession()
    if active is not None:  # another test's session, with other jars
        active.stop()
    builder = (SparkSession.builder.master("local[2]").appName("cdcf-unit")
               .config("spark.jars", str(engine_jar(PROJECT_ROOT / ".stack" / "cache" / "engine")))
               .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    for key, value in state_store_conf(partitions=2, memory_mb=128).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
