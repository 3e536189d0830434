"""Freshness and capacity of the streaming path, seen from outside: a prober commits probe changes to Postgres and
an independent poller asks Feast (`get_online_features`) until each new value is served. Freshness is that COMMIT
-> served time while the workload runs at a fixed rate; capacity steps the workload's rate up and keeps the
highest rate whose probes stayed bounded for the whole hold.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field

import psycopg2

from cdcf import features as decl
from cdcf import pg_clients
from ops.workload import TICK_S, Workload

FEATURE = f"{decl.TRANSACTION_RISK.name}:txn_amount_sum_1h"


@dataclass
class Probes:
    served: list[tuple[float, float]] = field(default_factory=list)  # (committed, seconds until served)
    unserved: list[tuple[float, float]] = field(default_factory=list)  # (committed, seconds waited so far)

    def latencies(self) -> list[float]:
        return [s for _, s in self.served]


class Prober:
    """Probe users, each owning one transaction (created now) whose amount a probe sets to a new value; the
    poller thread reads all outstanding probes in one `get_online_features` call every 10 ms until
    `txn_amount_sum_1h` equals that value."""

    def __init__(self, settings, store, users: int = 8) -> None:
        self.store, self.settings = store, settings
        self.conn = pg_clients.connect(settings)
        base = random.randrange(10**13, 10**14)
        self.txn = {base + i: base + i for i in range(users)}  # user id -> its transaction id
        self.pending: dict[int, tuple[float, float]] = {}  # user -> (amount, committed at)
        self.lock = threading.Lock()
        self.amount = 0
        with self.conn.cursor() as cur:
            for user, txn in self.txn.items():
                cur.execute("INSERT INTO transactions VALUES (%s, %s, NULL, 0, 'probe', now(), now())", (txn, user))
        self.conn.commit()

    def run(self, seconds: float, every_s: float, timeout_s: float = 60) -> Probes:
        """Commit a probe every ``every_s`` (to a user with none outstanding) for ``seconds``, then wait up to
        ``timeout_s`` for the outstanding ones."""
        probes, stop = Probes(), threading.Event()
        poller = threading.Thread(target=self._poll, args=(probes, stop), daemon=True)
        poller.start()
        started = time.monotonic()
        while (now := time.monotonic()) - started < seconds:
            with self.lock:
                idle = [u for u in self.txn if u not in self.pending]
            if idle:
                self._commit(random.choice(idle))
            time.sleep(max(0.0, every_s - (time.monotonic() - now)))
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        poller.join()
        with self.lock:
            now = time.monotonic()
            probes.unserved = [(committed, now - committed) for _, committed in self.pending.values()]
            self.pending.clear()
        return probes

    def _commit(self, user: int) -> None:
        self.amount += 1
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "UPDATE transactions SET amount = %s, created_at = now() WHERE txn_id = %s",
                    (self.amount, self.txn[user]),
                )
            self.conn.commit()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):  # the source restarted: no probe this time
            self.conn = self._reconnect()
            return
        with self.lock:
            self.pending[user] = (float(self.amount), time.monotonic())

    def _reconnect(self, timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return pg_clients.connect(self.settings)
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _poll(self, probes: Probes, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.lock:
                users = list(self.pending)
            if users:
                try:
                    values = self.store.get_online_features(
                        features=[FEATURE], entity_rows=[{"user_id": u} for u in users]
                    ).to_dict()["txn_amount_sum_1h"]
                except Exception:  # noqa: BLE001 - a store (or Feast's registry database) restarting: read again
                    time.sleep(0.1)
                    continue
                seen = time.monotonic()
                with self.lock:
                    for user, value in zip(users, values, strict=True):
                        amount, committed = self.pending[user]
                        if value == amount:
                            probes.served.append((committed, seen - committed))
                            del self.pending[user]
            time.sleep(0.01)

    def close(self) -> None:
        self.conn.close()


def quantile(samples: list[float], q: int) -> float:
    """The q-th percentile (1..99) of at least two samples."""
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def freshness(settings, store, rate: float, seconds: float, runs: int, population: dict, seed: int = 7) -> dict:
    """``runs`` runs of the workload at ``rate`` (transactions of rate/100 changes) for ``seconds`` with a probe
    every 0.25 s; the median over runs of each run's p50 and p99, and every sample (for the CDF). ``population``:
    the workload's users, products and entity_base."""
    prober = Prober(settings, store)
    prober.run(1, 1, timeout_s=180)  # the first probe waits out a cold job; it is not measured
    per_run, achieved = [], []
    for n in range(runs):
        workload = Workload(settings, seed=seed + n, **population)
        load = threading.Thread(
            target=lambda w=workload: w.run(rate, seconds, burst_every_s=0, per_commit=max(1, int(rate / 100)))
        )
        load.start()
        probes = prober.run(seconds, 0.25, timeout_s=30)
        load.join()
        per_run.append(probes)
        achieved.append(round(sum(workload.counts.values()) / seconds))
    prober.close()
    samples = [s for p in per_run for s in p.latencies()]
    return {
        "freshness_p50_s": round(statistics.median(quantile(p.latencies(), 50) for p in per_run), 3),
        "freshness_p99_s": round(statistics.median(quantile(p.latencies(), 99) for p in per_run), 3),
        "freshness_runs": [
            {
                "probes": len(p.served) + len(p.unserved),
                "served": len(p.served),
                "p50_s": round(quantile(p.latencies(), 50), 3),
                "p99_s": round(quantile(p.latencies(), 99), 3),
                "achieved_changes_per_s": a,
            }
            for p, a in zip(per_run, achieved, strict=True)
        ],
        "freshness_samples_s": [round(s, 4) for s in sorted(samples)],
    }


def capacity(
    settings, store, rates: list[float], hold_s: float, bound_s: float, population: dict, seed: int = 11
) -> dict:
    """Hold each rate for ``hold_s`` while probing once a second. A rate is held when the generator reached 95% of
    it and every probe of the second half was served within ``bound_s`` (a lag that grows without bound fails
    this); the sweep stops at the first rate not held. Before each step the job must have drained."""
    prober = Prober(settings, store)
    steps, held = [], 0.0
    for n, rate in enumerate(rates):
        drained = prober.run(1, 1, timeout_s=300)
        if not drained.served:
            break
        workload = Workload(settings, seed=seed + n, **population)
        load = threading.Thread(
            target=lambda w=workload, r=rate: w.run(r, hold_s, burst_every_s=0, per_commit=max(1, int(r * TICK_S)))
        )
        started = time.monotonic()
        load.start()
        probes = prober.run(hold_s, 1.0, timeout_s=0)
        load.join()
        achieved = sum(workload.counts.values()) / hold_s
        late = [(c - started, s) for c, s in probes.served + probes.unserved if c - started >= hold_s / 2]
        ok = bool(late) and all(s <= bound_s for _, s in late) and achieved >= 0.95 * rate
        steps.append(
            {
                "target_changes_per_s": rate,
                "achieved_changes_per_s": round(achieved),
                "held": ok,
                "second_half_max_lag_s": round(max((s for _, s in late), default=0.0), 2),
                "probes": [(round(c - started, 2), round(s, 3)) for c, s in probes.served],
                "unserved": [(round(c - started, 2), round(s, 3)) for c, s in probes.unserved],
                "generator_limited": achieved < 0.95 * rate,
            }
        )
        if not ok:
            break
        held = achieved
    prober.run(1, 1, timeout_s=900)  # what follows must not share the machine with a backlog
    prober.close()
    return {
        "capacity_changes_per_s": round(held),
        "capacity_hold_s": hold_s,
        "capacity_bound_s": bound_s,
        "capacity_steps": steps,
    }
