"""A Spark standalone cluster on this machine, from the pyspark install: a master and one-core workers, as a homelab
runs them (there, one worker per machine). The streaming job joins it with CDCF_SPARK_MASTER=<url>; the cluster test
and the fault matrix use it to kill an executor."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyspark

from cdcf.settings import Settings, write_private
from cdcf.spark import spark_defaults
from ops.stack import proc

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
EXECUTOR = "CoarseGrainedExecutorBackend"  # the executor's main class, in its command line


def master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        return json.load(response)


@dataclass(frozen=True)
class Cluster:
    url: str
    workers: tuple[int, ...]  # the worker daemons' pids

    def executors(self) -> list[int]:
        """The executors the workers run now (a worker starts one per application it serves)."""
        found = subprocess.run(["pgrep", "-f", EXECUTOR], capture_output=True, text=True).stdout.split()
        return [int(p) for p in found if _parent(int(p)) in self.workers]


@contextmanager
def standalone(settings: Settings, folder: Path, port: int, ui_port: int, workers: int = 2) -> Iterator[Cluster]:
    """A master on ``port`` and ``workers`` one-core workers (logs and work dirs under ``folder``), which admit
    only jobs holding the settings' Spark secret; yields the cluster and stops it on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "conf"  # the daemons read spark-defaults.conf there: the secret stays off their command lines
    write_private(conf / "spark-defaults.conf", spark_defaults(settings))
    env = {
        **settings.environment(),
        "SPARK_LOG_DIR": str(folder),
        "SPARK_WORKER_DIR": str(folder / "work"),
        "SPARK_CONF_DIR": str(conf),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }  # UIs too: not on the LAN
    url = f"spark://127.0.0.1:{port}"
    daemons = [
        subprocess.Popen(
            [
                str(SPARK_CLASS),
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui_port),
            ],
            env=env,
            stdout=open(folder / "master.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        proc.wait_until(
            lambda: proc.port_open("127.0.0.1", port),
            timeout_s=60,
            what="The Spark master",
            log_file=folder / "master.log",
        )
        for n in range(1, workers + 1):
            daemons.append(
                subprocess.Popen(
                    [
                        str(SPARK_CLASS),
                        "org.apache.spark.deploy.worker.Worker",
                        url,
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(ui_port + n),
                        "--host",
                        "127.0.0.1",
                    ],
                    env=env,
                    stdout=open(folder / f"worker{n}.log", "w"),
                    stderr=subprocess.STDOUT,
                )
            )
        proc.wait_until(
            lambda: len(master_state(ui_port)["workers"]) == workers, timeout_s=60, what=f"{workers} Spark workers"
        )
        yield Cluster(url, tuple(d.pid for d in daemons[1:]))  # spark-class execs the JVM
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(30)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return None
