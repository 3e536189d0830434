"""Prometheus metrics of our long-running processes (the archiver, the streaming job, the model API).

Each serves /metrics on ``settings.metrics_host``; on the local stack its port is an ephemeral one, announced to
the stack's Prometheus by a file_sd target file, ``<home>/run/metrics/<job>.json``, which Prometheus re-reads
every few seconds (a restarted process announces its new port). In compose each process has its own container and
``metrics_port`` is fixed.

Our processes keep their metrics in their own memory (one process, one registry). prometheus_client keeps them in
files instead, its multiprocess mode, whenever ``PROMETHEUS_MULTIPROC_DIR`` was set when it was imported, and
importing feast sets it (to a folder feast deletes when its importer exits). So this module puts prometheus_client
back into single-process mode on import, and our metrics are made from the names it exports: a stray variable can
neither move them into files nor fail their creation on a folder that is gone."""

from __future__ import annotations

import atexit
import json
import os
import socket
from pathlib import Path

from prometheus_client import (  # noqa: F401 - the names our metrics are made from (see the module's docstring)
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
    values,
)

from cdcf.settings import Settings


def single_process() -> None:
    """Make every metric created from now on keep its value in this process's memory, whatever the environment."""
    values.ValueClass = values.MutexValue


single_process()


def targets_dir(settings: Settings) -> Path:
    return settings.paths.run / "metrics"


def serve(settings: Settings, job: str, port: int | None = None) -> int:
    """Serve the default registry's metrics (and the process's own: CPU, memory, start time) in a thread; announce
    the endpoint as ``job``; return its port."""
    disable_created_metrics()  # counters and histograms without their *_created series
    server, _ = start_http_server(settings.metrics_port if port is None else port, addr=settings.metrics_host)
    bound = server.server_port
    announce(settings, job, f"{settings.metrics_host}:{bound}")
    return bound


def announce(settings: Settings, job: str, address: str) -> None:
    """Write ``job``'s file_sd target (atomically: Prometheus never reads half of it)."""
    folder = targets_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{job}.{os.getpid()}.partial"
    # the instance is the host and job, not the port: a restarted process (a new port) stays one series
    labels = {"job": job, "instance": f"{socket.gethostname()}/{job}"}
    announced = json.dumps([{"targets": [address], "labels": labels}]).encode()
    partial.write_bytes(announced)
    target = folder / f"{job}.json"
    partial.replace(target)
    atexit.register(_withdraw, target, announced)


def _withdraw(target: Path, announced: bytes) -> None:
    """At a clean exit, take back our target (a process that is gone on purpose is not down); one a successor
    wrote since is left alone."""
    try:
        if target.read_bytes() == announced:
            target.unlink()
    except FileNotFoundError:
        pass
