"""The fault matrix (`python -m bench.run --only faults`): each fault injected into a stack of its own while a
workload of 500 changes/s runs on its own entity range, then the range checked, online and offline, against the
SQL oracle.

The stack is a side stack (own home, ports and PostgreSQL cluster) whose streaming job runs on a Spark standalone
cluster of two one-core workers, so that an executor can be killed. It is started as users start theirs: `cdcf up`
in a process of its own, which has exited before the first fault (what its supervisors inherit from it must not
outlive it). Nothing recovers by hand except where an operator must act (`cdcf resnapshot` after the slot is lost,
resuming a connector someone paused, freeing memory of a full Redis, making the offline database writable again).
Per scenario:

- ``downtime_s``: the longest a probe waited to be served after the fault struck (a probe every 0.5 s, to one of 8
  probe users with none outstanding);
- ``back_to_exact_s``: from the workload's last change to the range verified exact (a probe committed after it
  served, every online value equal to the oracle, the archive's latest version of every row equal to the source);
- ``lost``: rows whose current state in the source differs from the archive's latest version, plus committed
  changes the archive lacks; ``doubled``: archived changes beyond the committed ones (the archive's key makes a
  re-delivery one row, and the oracle would see a change counted twice in a feature);
- ``oracle_online_match`` / ``oracle_offline_match``: every online value of the range, and a sample of its offline
  rows;
- ``first_served_s``: from the fault to the first change committed after it being served;
- for a kill: ``came_back``, a new process (another pid) runs in the killed one's place, and the changes served
  after the fault went through it.

After a lost slot, Debezium's new snapshot stands in for the changes made while capture was down (their versions
are gone from the WAL), so that scenario's ``lost`` counts row states only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis

from bench import exactness
from bench.freshness import Prober
from bench.hostile import OWNER, TABLES, VALUE, hostile_messages
from cdcf import kafka_clients, pg_clients
from cdcf.contracts import row_contracts
from cdcf.feast_config import feature_store
from cdcf.settings import Settings, load_settings
from connectors.connect import ConnectClient, connector_config
from connectors.resnapshot import resnapshot
from ops import stack
from ops.stack import kafka, monitoring, postgres, proc, redis_server, spark_cluster
from ops.stack.background import ARCHIVER, STREAMING
from ops.workload import Workload

# below Linux's ephemeral range (32768-60999), where a client's outgoing connection can hold a port a moment
SIDE = {
    "CDCF_PG_PORT": "21432",
    "CDCF_REDIS_PORT": "21379",
    "CDCF_KAFKA_PORT": "21092",
    "CDCF_KAFKA_CONTROLLER_PORT": "21093",
    "CDCF_CONNECT_PORT": "21083",
    "CDCF_PROMETHEUS_PORT": "21090",
    "CDCF_ALERTMANAGER_PORT": "21095",
    "CDCF_PG_CLUSTER": "cdcf_faults",
    "CDCF_REDIS_MAX_MEMORY_MB": "64",  # small enough to fill within seconds (redis_full_noeviction)
}
SPARK_PORT, SPARK_UI = 21077, 21180  # the workers' UIs take the next ports
LOGS = Path(tempfile.gettempdir()) / "cdcf-faults-logs"
CDCF = str(Path(sys.executable).with_name("cdcf"))


Pid = Callable[[Settings, spark_cluster.Cluster], int | None]


@dataclass
class Scenario:
    name: str
    inject: Callable[[Settings, spark_cluster.Cluster], dict] | None = None  # the fault; waits out its recovery
    fault_s: float = 0  # how long the fault lasts: the load runs this much longer
    by_state_only: bool = False  # history replaced by a snapshot: lost counts row states only
    kills: Pid | None = None  # the process whose kill -9 is the fault (inject, if given, does the killing)

    def strike(self, settings: Settings, cluster: spark_cluster.Cluster) -> dict:
        if self.inject is not None:
            return self.inject(settings, cluster)
        return _kill(self.kills(settings, cluster), self.name)


def _kill(pid: int | None, what: str) -> dict:
    if pid is None:
        raise RuntimeError(f"no process to kill for {what}")
    os.kill(pid, signal.SIGKILL)
    return {"killed_pid": pid}


def _kill_archiver(settings: Settings, _cluster) -> dict:
    """kill -9 of the archiver: its decoding workers (and their resource tracker) must go with it."""
    pid = ARCHIVER.pid(settings)
    children = proc.children(pid) if pid else []
    detail = _kill(pid, "kill_archiver")
    deadline = time.monotonic() + 10
    while (left := [c for c in children if proc.alive(c)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return {**detail, "archiver_children": len(children), "archiver_children_left": len(left)}


def _stop_redis(settings: Settings, _cluster) -> dict:
    pid = redis_server.pid(settings)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(10)
    os.kill(pid, signal.SIGCONT)
    return {"stopped_pid": pid, "stopped_s": 10}


def _pause_connector(settings: Settings, _cluster) -> dict:
    client = ConnectClient(settings)
    name, _ = connector_config(settings)
    try:
        client.pause(name)
        time.sleep(60)
        client.resume(name)
    finally:
        client.close()
    return {"paused_s": 60}


def _lose_the_slot(settings: Settings, _cluster) -> dict:
    """Stop capture, make PostgreSQL keep 1 MB of WAL for slots, write 64 MB and checkpoint: the slot is lost. Status
    must say so; then the setting is restored and `cdcf resnapshot` brings capture back."""
    client = ConnectClient(settings)
    name, _ = connector_config(settings)
    client.stop(name)
    client.close()
    postgres.admin_sql(settings, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    postgres.admin_sql(settings, "SELECT pg_reload_conf()")
    try:
        postgres.admin_sql(settings, "CREATE TABLE IF NOT EXISTS wal_filler (x text)")
        for _ in range(30):
            postgres.admin_sql(
                settings, "INSERT INTO wal_filler SELECT repeat(md5(i::text), 20) FROM generate_series(1, 100000) i"
            )
            postgres.admin_sql(settings, "TRUNCATE wal_filler")
            postgres.admin_sql(settings, "SELECT pg_switch_wal()")
            postgres.admin_sql(settings, "CHECKPOINT")
            state = postgres.admin_sql(
                settings, f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{settings.replication_slot}'"
            )
            if state == "lost":
                break
        status = next(h for h in stack.status(settings) if h.component == "postgres")
    finally:
        postgres.admin_sql(settings, "ALTER SYSTEM RESET max_slot_wal_keep_size")
        postgres.admin_sql(settings, "SELECT pg_reload_conf()")
    done = resnapshot(settings)
    return {
        "slot_state": state,
        "status_said": status.detail[:200],
        "status_failed": not status.healthy,
        "resnapshot_rows": done.snapshot_rows,
        "resnapshot_deletes": sum(done.deleted.values()),
        "resnapshot_s": round(done.seconds, 1),
    }


def _hostile_burst(settings: Settings, _cluster) -> dict:
    """1,000 hostile messages across the change topics (made from real ones); the archiver and the job must stay up
    (same pids) and dead-letter them."""
    archiver, job = ARCHIVER.pid(settings), STREAMING.pid(settings)
    before = json.loads(ARCHIVER.status_file(settings).read_text())["dead_letters"]
    messages = hostile_messages(settings, 1000)
    producer = kafka_clients.producer(settings, "admin", **{"message.max.bytes": 2_000_000})
    for n, (topic, value) in enumerate(messages):
        producer.produce(topic, key=f"hostile-{n}".encode(), value=value)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("could not produce the hostile messages")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        letters = json.loads(ARCHIVER.status_file(settings).read_text())["dead_letters"] - before
        if letters >= len(messages):
            break
        time.sleep(1)
    return {
        "bad_inputs_tried": len(messages),
        "dead_lettered": letters,
        "archiver_pid_unchanged": ARCHIVER.pid(settings) == archiver,
        "job_pid_unchanged": STREAMING.pid(settings) == job,
    }


# how long a store refuses writes in the scenarios below: on a standalone cluster a micro-batch fails (and its query
# restarts, which status and the alert report) once a task failed spark.task.maxFailures (4) attempts, ~40 s here
REFUSED_S = 60


def _fill_redis(settings: Settings, _cluster) -> dict:
    """Redis reaches its maxmemory (noeviction): filler keys until it refuses even a few bytes, kept full for
    REFUSED_S, then deleted, as an operator who freed memory would. Meanwhile the job must acknowledge nothing it did
    not write (its micro-batches fail uncommitted), and status and an alert must say so."""
    client = redis_server.client(settings)
    keys: list[str] = []

    def fill() -> None:  # from 1 MiB values down to 16 bytes: full to within a few bytes
        for size in (2**20, 2**16, 2**12, 2**8, 2**4):
            try:
                while len(keys) < 100_000:
                    client.set(f"cdcf-faults:filler:{len(keys)}", b"x" * size)
                    keys.append(f"cdcf-faults:filler:{len(keys)}")
            except redis.exceptions.OutOfMemoryError:  # Redis's OOM reply: maxmemory reached
                continue

    try:
        fill()
        return {"filler_keys": len(keys), **_while_refusing(settings, "online", keep=fill)}
    finally:
        for chunk in range(0, len(keys), 512):
            client.delete(*keys[chunk : chunk + 512])
        client.close()


def _offline_read_only(settings: Settings, _cluster) -> dict:
    """The offline database refuses writes (``default_transaction_read_only``, its sessions ended so that every new
    one has it: the stand-in for a full disk) for REFUSED_S; the job holds its offsets, says so, and catches up."""
    db = settings.offline_db
    postgres.admin_sql(settings, f"ALTER DATABASE {db} SET default_transaction_read_only = on")
    try:
        postgres.admin_sql(
            settings,
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}' "
            f"AND pid <> pg_backend_pid()",
        )
        return _while_refusing(settings, "offline")
    finally:
        postgres.admin_sql(settings, f"ALTER DATABASE {db} RESET default_transaction_read_only")


def _while_refusing(settings: Settings, store: str, keep: Callable[[], None] = lambda: None) -> dict:
    """Wait out REFUSED_S (``keep`` keeping the fault up each second), noting whether the streaming job's status and
    Prometheus's alerts named the refusing store meanwhile."""
    said, alerted, deadline = "", False, time.monotonic() + REFUSED_S
    while time.monotonic() < deadline:
        keep()
        line = next(h for h in stack.status(settings) if h.component == "streaming")
        if f"the {store} store refused" in line.detail:
            said = line.detail[:300]
        alerted = alerted or any(
            a["labels"].get("alertname") == "StoreRefusingWrites" and a["labels"].get("store") == store
            for a in monitoring.alerts(settings)
        )
        time.sleep(1)
    return {"status_said": said, "status_named_the_store": bool(said), "alert_fired": alerted}


SCENARIOS = [
    Scenario("kill_streaming_driver", kills=lambda s, c: STREAMING.pid(s)),
    Scenario("kill_executor", kills=lambda s, c: next(iter(c.executors()), None)),
    Scenario("kill_archiver", _kill_archiver, kills=lambda s, c: ARCHIVER.pid(s)),
    Scenario("kill_connect", kills=lambda s, c: kafka.service_pid(s, kafka.CONNECT)),
    Scenario("kill_kafka_broker", kills=lambda s, c: kafka.service_pid(s, kafka.KAFKA)),
    Scenario("kill_redis", kills=lambda s, c: redis_server.pid(s)),
    Scenario("sigstop_redis_10s", _stop_redis, fault_s=10),
    Scenario("restart_postgres", lambda s, c: (postgres.restart(s), {})[1]),
    Scenario("connector_paused_60s", _pause_connector, fault_s=60),
    Scenario("hostile_burst_1000", _hostile_burst),
    Scenario("slot_lost_then_resnapshot", _lose_the_slot, fault_s=30, by_state_only=True),
    Scenario("redis_full_noeviction", _fill_redis, fault_s=REFUSED_S),
    Scenario("offline_store_read_only", _offline_read_only, fault_s=REFUSED_S),
]


class Load:
    """The workload at ``rate`` on a range of its own, surviving a source that restarts (a failed transaction is
    not counted; the workload reloads its live rows and goes on)."""

    def __init__(self, settings: Settings, base: int, users: int, products: int, seed: int) -> None:
        self.workload = Workload(settings, seed=seed, users=users, products=products, entity_base=base)
        self.failed_commits = 0
        self.thread: threading.Thread | None = None

    def start(self, rate: float, seconds: float) -> None:
        def run() -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    self.workload.run(rate, left, burst_every_s=0, per_commit=max(1, int(rate / 100)))
                except psycopg2.Error:
                    self.failed_commits += 1
                    time.sleep(0.5)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> int:
        self.thread.join()
        return sum(self.workload.counts.values())


def _state_diff(settings: Settings, ranges: dict[str, tuple[int, int]]) -> int:
    """Rows of the range whose current state (owner and value) in the source differs from the archive's latest
    version of them (a row the archive holds as live and the source lacks counts too)."""
    diffs = 0
    source = pg_clients.connect(settings)
    archive = exactness.connect(settings)
    try:
        for table in TABLES:
            key, owner, value = row_contracts()[table].key, OWNER[table], VALUE[table]
            low, high = ranges["product_id" if owner == "product_id" else "user_id"]
            with source.cursor() as cur:
                cur.execute(
                    f"SELECT {key}, {owner}, {value}::numeric FROM {table} WHERE {owner} BETWEEN %s AND %s", (low, high)
                )
                truth = {k: (o, v) for k, o, v in cur.fetchall()}
            with archive.cursor() as cur:
                cur.execute(
                    f"""
                    SELECT DISTINCT ON (row_key) row_key, op, (after->>'{owner}')::bigint, (after->>'{value}')::numeric
                    FROM cdc_changelog WHERE source_table = %s AND row_key IN (
                        SELECT row_key FROM cdc_changelog WHERE source_table = %s AND coalesce(
                            after->>'{owner}', before->>'{owner}') ~ '^[0-9]+$' AND coalesce(after->>'{owner}',
                            before->>'{owner}')::bigint BETWEEN %s AND %s)
                    ORDER BY row_key, lsn DESC, op = 'd' DESC""",
                    (table, table, low, high),
                )
                archived = {k: (o, v) for k, op, o, v in cur.fetchall() if op != "d" and low <= o <= high}
            diffs += sum(1 for k in truth.keys() | archived.keys() if truth.get(k) != archived.get(k))
    finally:
        source.close()
        archive.close()
    return diffs


def _archived_changes(settings: Settings, since, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The range's changes archived since ``since``, by table and op: its rows' changes, and the chargebacks of its
    transactions (the workload's chargeback ids are their transactions' ids)."""
    (ulo, uhi), (plo, phi) = ranges["user_id"], ranges["product_id"]
    owner = "coalesce(after->>'{0}', before->>'{0}')"
    with exactness.connect(settings) as conn, conn.cursor() as cur:
        cur.execute(
            f"""SELECT source_table || '.' || op, count(*) FROM cdc_changelog WHERE commit_ts >= %s
            AND op IN ('c', 'u', 'd') AND (
            (source_table IN ('transactions', 'sessions') AND {owner.format("user_id")} ~ '^[0-9]+$'
             AND {owner.format("user_id")}::bigint BETWEEN %s AND %s)
            OR (source_table = 'reviews' AND {owner.format("product_id")} ~ '^[0-9]+$'
             AND {owner.format("product_id")}::bigint BETWEEN %s AND %s)
            OR (source_table = 'users' AND row_key BETWEEN %s AND %s)
            OR (source_table = 'chargebacks' AND row_key IN (SELECT row_key FROM cdc_changelog WHERE
                source_table = 'transactions' AND {owner.format("user_id")} ~ '^[0-9]+$'
                AND {owner.format("user_id")}::bigint BETWEEN %s AND %s))) GROUP BY 1 ORDER BY 1""",
            (since, ulo, uhi, plo, phi, ulo, uhi, ulo, uhi),
        )
        counts = dict(cur.fetchall())
    conn.close()
    return counts


def run_scenario(
    settings: Settings,
    store,
    cluster: spark_cluster.Cluster,
    scenario: Scenario,
    n: int,
    rate: float,
    before_s: float,
    after_s: float,
    timeout_s: float,
) -> dict:
    base = (n + 1) * 10**10
    users, products = 400, 60
    ranges = {"user_id": (base + 1, base + users), "product_id": (base + 1, base + products)}
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT now()")
        since = cur.fetchone()[0]
    load = Load(settings, base, users, products, seed=n)
    prober = Prober(settings, store)
    load.start(rate, before_s + scenario.fault_s + after_s)
    probes: list = []
    probing = threading.Thread(
        target=lambda: probes.append(prober.run(before_s + scenario.fault_s + after_s, 0.5, timeout_s=timeout_s)),
        daemon=True,
    )
    probing.start()
    time.sleep(before_s)
    faulted = time.monotonic()
    print(f"faults: {scenario.name} ...", flush=True)
    detail = scenario.strike(settings, cluster)
    committed = load.join()
    load_ended = time.monotonic()
    probing.join()
    # the longest any probe waited after the fault: those outstanding when it struck count from then
    downtime = max(
        (c + s - max(c, faulted) for c, s in probes[0].served + probes[0].unserved if c + s >= faulted), default=0.0
    )
    verdict, lost_rows, deadline = None, None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # a probe after the last change served, then the range must be exact
        if served := prober.run(1, 1, timeout_s=max(1.0, deadline - time.monotonic())).served:
            probes[0].served += served
            time.sleep(settings.stream_settle_s + 2)
            lost_rows = _state_diff(settings, ranges)
            with exactness.connect(settings) as conn:
                verdict = exactness.compare_online(settings, conn, ranges)
            conn.close()
            if lost_rows == 0 and verdict.match == 1.0:
                break
        time.sleep(2)
    exact_at = time.monotonic()
    prober.close()
    if scenario.kills is not None:  # the changes served since went through a new process
        successor = scenario.kills(settings, cluster)
        detail["successor_pid"] = successor
        detail["came_back"] = bool(successor and successor != detail["killed_pid"] and proc.alive(successor))
    with exactness.connect(settings) as conn:
        offline = exactness.compare_offline(conn, 100, ranges)
    conn.close()
    archived_by_kind = _archived_changes(settings, since, ranges)
    archived = sum(archived_by_kind.values())
    missing = 0 if scenario.by_state_only else max(0, committed - archived)
    doubled = 0 if scenario.by_state_only else max(0, archived - committed - load.failed_commits)
    online_match = verdict.match if verdict else 0.0
    first_served = min((c + s - faulted for c, s in probes[0].served if c >= faulted), default=None)
    result = {
        "scenario": scenario.name,
        "load_changes_per_s": rate,
        "entity_base": base,
        **detail,
        "downtime_s": round(downtime, 2),
        "first_served_s": round(first_served, 2) if first_served is not None else None,
        "back_to_exact_s": round(exact_at - load_ended, 2),
        "changes_committed": committed,
        "changes_archived": archived,
        "committed_by_kind": dict(load.workload.counts),  # the workload's kinds of change, against
        "archived_by_table_op": archived_by_kind,  # the archive's tables and ops
        "failed_commits": load.failed_commits,
        "lost": (lost_rows if lost_rows is not None else -1) + missing,
        "doubled": doubled,
        "oracle_online_match": online_match,
        "oracle_online_compared": verdict.compared if verdict else 0,
        "oracle_offline_match": offline.match,
        "oracle_offline_compared": offline.compared,
        "mismatches": ((verdict.mismatches if verdict else []) + offline.mismatches)[:10],
    }
    result["survived"] = (
        result["lost"] == 0
        and doubled == 0
        and online_match == 1.0
        and offline.match == 1.0
        and detail.get("archiver_pid_unchanged", True)
        and detail.get("job_pid_unchanged", True)
        and detail.get("dead_lettered") == detail.get("bad_inputs_tried")
        and detail.get("status_failed", True)
        and not detail.get("archiver_children_left")
        and detail.get("came_back", True)
        and detail.get("status_named_the_store", True)
        and detail.get("alert_fired", True)
    )
    print(
        f"faults: {scenario.name}: survived={result['survived']} downtime {result['downtime_s']} s, exact "
        f"{result['back_to_exact_s']} s after the load, lost {result['lost']}, doubled {doubled}, oracle "
        f"{online_match:.4f}/{offline.match:.4f}",
        flush=True,
    )
    return result


@contextmanager
def side_stack(main: Settings, folder: Path, spark_master: str) -> Iterator[Settings]:
    """A stack of its own under ``folder`` (sharing the main jar cache), its streaming job on ``spark_master``;
    purged on exit. The environment carries its settings, as the supervised processes read them from there."""
    home = folder / "stack"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "jars").symlink_to(main.paths.jars)
    (home / "cache" / "engine").symlink_to(main.paths.cache / "engine")
    shutil.copy(main.paths.secrets, home / "secrets.env")
    saved = dict(os.environ)
    os.environ.update({**SIDE, "CDCF_HOME": str(home), "CDCF_SPARK_MASTER": spark_master})
    try:
        settings = load_settings()
        # `cdcf up` in a process of its own, gone before the first fault; it imports feast itself (and so makes
        # the folder of PROMETHEUS_MULTIPROC_DIR that goes with it), as it does for a user
        starter = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
        up = subprocess.run([CDCF, "up"], env=starter, capture_output=True, text=True, timeout=900)
        for line in up.stdout.splitlines():
            print(f"faults: side stack {line}", flush=True)
        if up.returncode != 0:
            raise RuntimeError(f"`cdcf up` of the side stack failed: {(up.stderr or up.stdout)[-2000:]}")
        yield settings
    finally:
        try:
            shutil.copytree(home / "logs", LOGS, dirs_exist_ok=True)  # for a look after the purge
            print(f"faults: the side stack's logs are in {LOGS}", flush=True)
            stack.purge(load_settings())
        finally:
            os.environ.clear()
            os.environ.update(saved)


def run(
    main: Settings, rate: float, before_s: float, after_s: float, timeout_s: float, only: list[str] | None = None
) -> dict:
    """Every scenario (or those named in ``only``) on a side stack; the matrix and its totals."""
    scenarios = [s for s in SCENARIOS if only is None or s.name in only]
    results = []
    with tempfile.TemporaryDirectory(prefix="cdcf-faults-") as tmp:
        folder = Path(tmp)
        with (
            spark_cluster.standalone(main, folder / "spark", SPARK_PORT, SPARK_UI) as cluster,
            side_stack(main, folder, cluster.url) as settings,
        ):
            store = feature_store(settings)
            Prober(settings, store).run(1, 1, timeout_s=300)  # the job is up and serving before the first fault
            for n, scenario in enumerate(scenarios):
                try:
                    results.append(
                        run_scenario(settings, store, cluster, scenario, n, rate, before_s, after_s, timeout_s)
                    )
                except Exception as exc:  # noqa: BLE001 - a scenario that breaks the harness is a failed one
                    print(f"faults: {scenario.name} failed: {exc!r}", flush=True)
                    results.append({"scenario": scenario.name, "survived": False, "error": repr(exc)[:500]})
        shutil.copytree(folder / "spark", LOGS / "spark", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.jar"))
    return {
        "faults_tried": len(results),
        "faults_survived": sum(1 for r in results if r["survived"]),
        "bad_inputs_tried": sum(r.get("bad_inputs_tried", 0) for r in results),
        "faults": results,
    }
