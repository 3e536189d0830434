"""The window engine (decode -> route -> stateful processor on the executors) against its pure-Python twin
(tests/engine_model.py), on random CDC histories: inserts, amount and event-time updates, owner moves of users
and products, deletes, re-inserts, re-delivered events, rows dated up to 40 days back, profile upserts, and clock
jumps that make windows decay; ungated (changes apply on arrival) and gated by Connect's offset commits arriving
a micro-batch or two after the changes they cover. Each micro-batch is one file of Kafka-shaped records; every
emit (as-of time, decay or not, every feature to the bit) must match, entity by entity, in order."""

from __future__ import annotations

import bisect
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from pyarrow import parquet
from pyspark.sql import functions as F

from cdcf import features as decl
from cdcf.decoder import Change, Position, decode
from cdcf.engine import CAPTURED, replay, route_spec
from cdcf.sources import features_of
from streaming.decode import routed
from streaming.job import checkpointed_partitions, feature_rows
from tests.cdc_cases import PREFIX
from tests.engine_history import OFFSETS, History, offset_commit, random_batches
from tests.engine_model import Model

SCHEMA = "topic string, partition int, offset long, value binary"
ARROW = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("value", pa.binary()),
        ("key", pa.binary()),
    ]
)


def _run(spark, tmp_path: Path, batches: list[list[tuple]], offsets_topic: str | None = None) -> tuple[dict, list]:
    """Stream the batches of (topic, value) or (topic, value, key) through the job's pipeline (settle 0); return
    every emitted row by entity, and the query's progress (one entry per micro-batch, data or not)."""
    source = tmp_path / "records"
    for n, batch in enumerate(batches):  # one file a micro-batch, written here (a Spark job each took 0.3-0.6 s)
        (source / f"{n:04d}").mkdir(parents=True)
        rows = [
            {"topic": m[0], "partition": 0, "offset": i, "value": m[1], "key": m[2] if len(m) > 2 else None}
            for i, m in enumerate(batch)
        ]
        parquet.write_table(pa.Table.from_pylist(rows, schema=ARROW), source / f"{n:04d}" / "part.parquet")
    emitted: dict[tuple, list] = {}

    def collect(df, batch_id):
        for r in df.collect():
            values = {k: v for k, v in r.asDict().items() if k not in ("entity", "id", "as_of_us", "decay")}
            emitted.setdefault((r["entity"], r["id"]), []).append((batch_id, r["as_of_us"], r["decay"], values))

    records = (
        spark.readStream.schema(f"{SCHEMA}, key binary").option("maxFilesPerTrigger", 1).parquet(str(source / "*"))
    )
    query = (
        feature_rows(records, PREFIX, settle_s=0, offsets_topic=offsets_topic)
        .writeStream.foreachBatch(collect)
        .outputMode("update")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(processingTime="10 milliseconds")
        .start()
    )
    try:
        query.processAllAvailable()
        deadline = time.monotonic() + 30  # and the no-data batch that fires the last timers
        while time.monotonic() < deadline and (
            not query.recentProgress or query.recentProgress[-1]["numInputRows"] > 0
        ):
            time.sleep(0.2)
        time.sleep(1)
        progress = list(query.recentProgress)
    finally:
        query.stop()
    return emitted, progress


def _watermark(progress: dict) -> int | None:
    mark = progress.get("eventTime", {}).get("watermark")
    if mark is None or mark.startswith("1970"):
        return None
    return int(datetime.fromisoformat(mark.replace("Z", "+00:00")).timestamp() * 1000) * 1000


def _features(values: dict, entity: str) -> dict:
    (kind,) = [e for e in decl.ENTITIES if e.name == entity]
    return {f.name: values[f.name] for f in features_of(kind)}


@pytest.mark.parametrize(("seed", "gated"), [(1, False), (2, False), (6, True), (7, True)])
def test_the_engine_agrees_with_its_twin_on_random_histories(spark, tmp_path, seed, gated):
    batches = random_batches(seed, clocked=gated)
    emitted, progress = _run(spark, tmp_path, batches, offsets_topic=OFFSETS if gated else None)

    model, files, waited = Model(gated), iter(batches), 0
    progress = sorted(progress, key=lambda p: p["batchId"])
    for p, after in zip(progress, progress[1:] + [None], strict=True):
        batch = next(files) if p["numInputRows"] > 0 else []
        changes = [
            c for n, m in enumerate(batch) if isinstance(c := decode(PREFIX, Position(m[0], 0, n), None, m[1]), Change)
        ]
        model.batch(changes, _watermark(p), _watermark(after) if after else None)
        waited += sum(len(v) for v in model.waiting.values())
    assert next(files, None) is None, "every file was read by some micro-batch"
    names = {e.name: [f.name for f in features_of(e)] for e in decl.ENTITIES}
    ours = {
        key: [(as_of, decay, {n: values[n] for n in names[key[0]]}) for _, as_of, decay, values in rows]
        for key, rows in emitted.items()
    }
    twin = dict(model.emits)
    for key in sorted(set(ours) | set(twin)):
        assert ours.get(key, []) == twin.get(key, []), key
    assert sum(len(v) for v in twin.values()) > 100
    assert sum(1 for v in twin.values() for _, decay, _ in v if decay) > 5  # windows decayed with no event
    assert (waited > 100) == gated, "gated, changes wait for an offset commit past them"


@pytest.mark.parametrize("seed", [3, 4])
def test_the_backfills_replay_gives_the_streaming_values_at_every_streamed_emit(spark, tmp_path, seed):
    """The backfill runs the same core (Replay over EntityCore) over the whole history at once: the value it holds
    as of each time the streaming job emitted (its latest row at or before it) is what the stream emitted.
    Re-deliveries date back at most 12 hours: the stream keeps a taken-away row's LSN for 24 hours of commit time
    (an older re-delivery would count again there), while the replay sees every change in commit order."""
    batches = random_batches(seed, redelivery=timedelta(hours=12))
    streamed, _ = _run(spark, tmp_path, batches)
    records = spark.createDataFrame([(t, 0, i, v) for i, (t, v) in enumerate(m for b in batches for m in b)], SCHEMA)
    end_us = max(as_of for rows in streamed.values() for _, as_of, _, _ in rows) + 1
    replayed: dict[tuple, list] = {}
    for r in sorted(replay(routed(records, PREFIX, route_spec()), end_us).collect(), key=lambda r: r["as_of_us"]):
        replayed.setdefault((r["entity"], r["id"]), []).append((r["as_of_us"], _features(r.asDict(), r["entity"])))
    assert set(replayed) == set(streamed)
    compared = 0
    for key, rows in streamed.items():
        times = [as_of for as_of, _ in replayed[key]]
        assert times == sorted(set(times)), "one row per as-of time"
        for _, as_of, _, values in rows:
            at = bisect.bisect_right(times, as_of) - 1
            assert at >= 0 and replayed[key][at][1] == _features(values, key[0]), (key, as_of)
            compared += 1
    assert compared > 100 and sum(len(v) for v in replayed.values()) >= compared


def test_with_connects_offsets_only_an_offset_commit_of_ours_moves_the_clock(spark, tmp_path):
    """Kafka keeps no order across topics: a heartbeat (or any change) two hours on, on its own topic, says nothing
    of changes still on their way to others, so it must not decay a window. Connect's offset commit for our server
    at that time does; another connector's, a tombstone, garbage, or the offsets of a snapshot and of the streaming
    start after it (their time is the snapshot's, not that of the changes still to be streamed) do nothing."""
    history = History(5)
    created = history.now
    created_us = int(created.timestamp() * 1e6)
    insert = history._event(
        "transactions",
        "c",
        None,
        {
            "txn_id": 1,
            "user_id": 7,
            "product_id": None,
            "amount": "10.00",
            "merchant": "m",
            "created_at": history._ts(created),
            "updated_at": None,
        },
    )
    beat = history.quiet(2)
    hour = 3600 * 10**6
    emitted, _ = _run(
        spark,
        tmp_path,
        [
            [insert, offset_commit(created_us)],
            [beat],
            [
                offset_commit(created_us + 40 * 24 * hour, server="elsewhere"),
                (OFFSETS, None, b'["cdcf-app",{"server":"cdc"}]'),
                (OFFSETS, b"not json", b"[]"),
                offset_commit(created_us + 30 * 24 * hour, phase="snapshot"),
                offset_commit(created_us + 30 * 24 * hour, phase="after snapshot"),
            ],
            [offset_commit(created_us + 2 * hour)],
        ],
        offsets_topic=OFFSETS,
    )
    rows = emitted[("user", 7)]
    decays = [as_of for batch, as_of, decay, _ in rows if decay]
    assert all(batch >= 3 for batch, _, decay, _ in rows if decay), rows  # from the offset commit on, none before
    assert decays == [created_us + hour], "the 1h window decayed, as of its end; 24h and more did not"
    assert rows[-1][3]["txn_count_1h"] == 0 and rows[-1][3]["txn_amount_max_24h"] == 10.0


def test_a_change_waits_for_the_clock_so_an_emit_holds_its_whole_transaction(spark, tmp_path):
    """One source transaction buys product 11 and reviews it: two topics, so the job may read the two changes a
    micro-batch apart. Neither applies before Connect's offset commit says every change up to that commit is in
    Kafka; then one emit as of the commit holds both, and no row as of that time ever held one without the other."""
    history = History(8)
    at = history._ts(history.now)
    purchase = history._event(
        "transactions",
        "c",
        None,
        {
            "txn_id": 1,
            "user_id": 7,
            "product_id": 11,
            "amount": "10.00",
            "merchant": "m",
            "created_at": at,
            "updated_at": None,
        },
    )
    review = history._event(
        "reviews",
        "c",
        None,
        {"review_id": 1, "product_id": 11, "user_id": None, "rating": 4, "created_at": at},
        same_commit=True,
    )
    commit_us = int(history.now.timestamp() * 1e6)
    earlier = commit_us - 10**6
    emitted, _ = _run(
        spark,
        tmp_path,
        [[purchase, offset_commit(earlier)], [review], [offset_commit(commit_us)]],
        offsets_topic=OFFSETS,
    )
    (product,) = emitted[("product", 11)]
    assert product[0] >= 2 and product[1] == commit_us and not product[2]
    assert product[3]["purchases_7d"] == 1 and product[3]["review_count_30d"] == 1
    (user,) = emitted[("user", 7)]
    assert user[0] >= 2 and user[1] == commit_us and user[3]["txn_count_1h"] == 1


def test_a_checkpoint_tells_the_state_partitions_it_fixed(spark, tmp_path):
    """Spark keeps a checkpoint's first shuffle partitions for good; the job routes its clock for that many."""
    assert checkpointed_partitions(tmp_path / "checkpoint") is None
    _run(spark, tmp_path, [[offset_commit(1_790_000_000_000_000)]], offsets_topic=OFFSETS)
    assert checkpointed_partitions(tmp_path / "checkpoint") == int(spark.conf.get("spark.sql.shuffle.partitions"))


@pytest.mark.parametrize("partitions", [2, 4, 16])
def test_each_offset_commit_reaches_every_state_partition(spark, partitions):
    """The engine reads the clock of its own micro-batch from the offset commits routed to each state partition
    (one row per partition, keyed so that Spark's hash partitioning sends it there)."""
    records = spark.createDataFrame(
        [(*offset_commit(1_790_000_000_000_000), 0, 0)],
        "topic string, value binary, key binary, partition int, offset long",
    )
    clock = routed(records, PREFIX, route_spec(OFFSETS, PREFIX, partitions))
    landed = clock.repartition(partitions, "entity", "id").select(F.spark_partition_id().alias("p"), "entity", "table")
    rows = landed.collect()
    assert sorted(r["p"] for r in rows) == list(range(partitions))
    assert {(r["entity"], r["table"]) for r in rows} == {("", CAPTURED)}
