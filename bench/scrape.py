"""What a Prometheus scrape of our processes costs under load: GET /metrics of every endpoint the stack announces
(the archiver, the streaming job; the model API when it runs), five times a second each, while a workload commits
changes at ``rate`` on a population of its own.

Keys: ``metrics_scrape_ms`` (the p99 of the slowest endpoint), ``metrics_scrapes`` (per endpoint: p50, p99, the
body's size, the number of scrapes)."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request

from cdcf.exporter import targets_dir
from cdcf.settings import Settings
from ops.workload import Workload

EVERY_S = 0.2


def endpoints(settings: Settings) -> dict[str, str]:
    """job -> its /metrics URL, from the file_sd targets the processes wrote."""
    found = {}
    for path in sorted(targets_dir(settings).glob("*.json")):
        (entry,) = json.loads(path.read_text())
        found[entry["labels"]["job"]] = f"http://{entry['targets'][0]}/metrics"
    return found


def scrape_phase(settings: Settings, rate: float, seconds: float, population: dict, seed: int) -> dict:
    urls = endpoints(settings)
    if not urls:
        raise RuntimeError(f"no metrics endpoint announced in {targets_dir(settings)}: is the stack up?")
    workload = Workload(
        settings,
        seed=seed,
        users=population["users"],
        products=population["products"],
        entity_base=population["entity_base"],
    )
    load = threading.Thread(target=workload.run, args=(rate, seconds), kwargs={"burst_every_s": 0}, daemon=True)
    times: dict[str, list[float]] = {job: [] for job in urls}
    sizes: dict[str, int] = {}
    load.start()
    while load.is_alive():
        for job, url in urls.items():
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as response:
                sizes[job] = len(response.read())
            times[job].append((time.perf_counter() - started) * 1000)
        time.sleep(EVERY_S)
    load.join()
    scrapes = {
        job: {
            "p50_ms": round(statistics.median(t), 2),
            "p99_ms": round(_p99(t), 2),
            "bytes": sizes[job],
            "scrapes": len(t),
        }
        for job, t in times.items()
    }
    return {
        "metrics_scrape_ms": max(s["p99_ms"] for s in scrapes.values()),
        "metrics_scrapes": scrapes,
        "metrics_scrape_load": {"changes_per_s": rate, "seconds": seconds, "committed": sum(workload.counts.values())},
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
