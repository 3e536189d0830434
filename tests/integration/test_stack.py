"""The local stack against its real services: health, configuration, and the paths later stages stand on."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import psycopg2
import pytest
import redis

from cdcf import features as decl
from cdcf import kafka_clients, pg_clients
from cdcf.feast_config import feature_store
from cdcf.redis_clients import redis_client
from cdcf.spark import spark_session
from connectors.connect import connect_auth
from ops.stack import kafka, postgres, proc, redis_server, status
from ops.stack.background import ARCHIVER, STREAMING
from ops.stack.monitoring import ALERTMANAGER, PROMETHEUS
from tests.conftest import CDCF, healthy_status

pytestmark = pytest.mark.integration


def test_status_reports_every_component_healthy(settings):
    result = healthy_status()
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "postgres",
        "redis",
        "kafka",
        "connect",
        "feast",
        "archiver",
        "streaming",
        "prometheus",
        "alertmanager",
    ]
    assert all(" OK " in line for line in lines), result.stdout
    assert all(h.healthy for h in status(settings))


def test_every_port_the_stack_listens_on_is_loopback(settings):
    """Postgres, Redis, Kafka, Connect, the streaming job's Spark driver (its UI included), the jobs' /metrics,
    Prometheus and Alertmanager: nothing of the local stack listens where the LAN reaches it."""
    job = STREAMING.pid(settings)
    pids = {
        postgres.pid(settings),
        redis_server.pid(settings),
        kafka.service_pid(settings, kafka.KAFKA),
        kafka.service_pid(settings, kafka.CONNECT),
        job,
        *proc.children(job),
        ARCHIVER.pid(settings),
        PROMETHEUS.pid(settings),
        ALERTMANAGER.pid(settings),
    }
    sockets = _listening(pids - {None})
    assert {
        settings.pg_port,
        settings.redis_port,
        settings.kafka_port,
        settings.connect_port,
        settings.prometheus_port,
        settings.alertmanager_port,
    } <= {port for _, port in sockets}, sockets
    assert len(sockets) >= 8, sockets  # and the driver's RPC, block manager and UI ports
    assert all(
        (address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address).is_loopback
        for address, _ in sockets
    ), sorted(map(str, sockets))


def _listening(pids: set[int]) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, port) of every TCP socket the processes ``pids`` listen on, from Linux's /proc."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)  # each 32-bit word in the host's (little-endian) order
                found.add(
                    (ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))), int(port, 16))
                )
    return found


def test_connect_lists_the_debezium_postgres_plugin_to_the_operator_only(settings):
    url = f"{settings.connect_url}/connector-plugins"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = httpx.BasicAuth(settings.connect_user, settings.connect_password.get_secret_value() + "x")
    assert httpx.get(url, timeout=10, auth=wrong).status_code == 401
    plugins = httpx.get(url, timeout=10, auth=connect_auth(settings)).raise_for_status().json()
    postgres = [p for p in plugins if p["class"] == kafka.DEBEZIUM_POSTGRES]
    assert postgres and postgres[0]["type"] == "source"
    assert postgres[0]["version"].startswith("3.6.1")


def test_postgres_is_ready_for_logical_decoding(settings):
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int, "
            "current_setting('max_slot_wal_keep_size')"
        )
        assert cur.fetchone() == ("logical", 10, "4GB")
        cur.execute(
            "SELECT relname, relreplident FROM pg_class WHERE relname = ANY(%s)", ([t.name for t in decl.TABLES],)
        )
        assert dict(cur.fetchall()) == {t.name: "f" for t in decl.TABLES}  # REPLICA IDENTITY FULL
        cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (settings.publication,))
        assert {r[0] for r in cur.fetchall()} == {t.name for t in decl.TABLES} | {"cdc_heartbeat"}
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'transactions' ORDER BY ordinal_position"
        )
        assert cur.fetchall() == [
            ("txn_id", "bigint"),
            ("user_id", "bigint"),
            ("product_id", "bigint"),
            ("amount", "numeric"),
            ("merchant", "text"),
            ("created_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
        ]


def test_debezium_role_can_replicate_and_read_but_not_write(settings):
    dsn = settings.pg_dsn(user=settings.debezium_user)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolreplication, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (True, False, False)
        cur.execute("SELECT count(*) FROM transactions")  # may read the captured tables
        cur.execute("INSERT INTO cdc_heartbeat VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET beat_at = now()")
    conn.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("DELETE FROM transactions")
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="permission denied|not allowed|privilege"):
        pg_clients.connect(settings, settings.registry_db, user=settings.debezium_user).close()


def test_redis_has_a_writer_and_a_reader_and_no_default_user(settings):
    anonymous = redis.Redis(host=settings.redis_host, port=settings.redis_port, socket_timeout=3)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):  # the default user is off, whatever its password
        redis.Redis(
            host=settings.redis_host,
            port=settings.redis_port,
            username="default",
            password=settings.redis_password.get_secret_value(),
            socket_timeout=3,
        ).ping()
    key = f"cdcf-test-acl-{time.time_ns()}"
    writer, reader = redis_client(settings, "writer"), redis_client(settings, "reader")
    try:
        writer.hset(key, "f", "v")
        assert reader.hget(key, "f") == b"v"
        for write in (
            lambda: reader.hset(key, "f", "w"),
            lambda: reader.delete(key),
            reader.flushall,
            lambda: reader.config_set("maxmemory", "1"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write()
        assert writer.hget(key, "f") == b"v"
    finally:
        writer.delete(key)


def test_feast_reads_its_registry_from_postgres_and_a_push_is_read_back(settings):
    store = feature_store(settings, "writer")
    assert store.config.registry.registry_type == "sql"
    assert {fv.name for fv in store.list_feature_views()} == {v.name for v in decl.ALL_VIEWS}
    service = store.get_feature_service("fraud_detection_v1")
    assert [(p.name, [f.name for f in p.features]) for p in service.feature_view_projections] == [
        (v.name, [f.name for f in v.features]) for v in (decl.TRANSACTION_RISK, decl.USER_ACTIVITY)
    ] + [("fraud_request_features", list(decl.FRAUD_REQUEST_FEATURES))]

    user_id = uuid.uuid4().int % 10**12
    as_of = datetime.now(UTC).replace(microsecond=0)
    store.push(
        decl.USER_PROFILE.push_source,
        pd.DataFrame(
            [
                {
                    "user_id": user_id,
                    "age": 41,
                    "income": 52000.5,
                    "account_status": "active",
                    decl.EVENT_TIMESTAMP: as_of,
                }
            ]
        ),
    )
    got = store.get_online_features(
        features=["user_profile_features:age", "user_profile_features:income", "user_profile_features:account_status"],
        entity_rows=[{"user_id": user_id}, {"user_id": user_id + 1}],
    ).to_dict()
    assert got == {
        "user_id": [user_id, user_id + 1],
        "age": [41, None],
        "income": [52000.5, None],
        "account_status": ["active", None],
    }


def test_spark_writes_to_and_reads_from_kafka(settings):
    topic = f"test.spark.{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(settings, [topic])  # the broker creates no topic on first use
    spark = spark_session(settings, "test-spark-kafka")
    options = kafka_clients.spark_options(settings, "admin")
    try:
        rows = [(str(i), f"value-{i}") for i in range(50)]
        (
            spark.createDataFrame(rows, "key string, value string")
            .write.format("kafka")
            .options(**options)
            .option("topic", topic)
            .save()
        )
        back = (
            spark.read.format("kafka")
            .options(**options)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .load()
            .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "offset")
        )
        got = sorted((r.key, r.value) for r in back.collect())
        assert got == sorted(rows)
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    finally:
        spark.stop()
        kafka.delete_topics(settings, [topic])


def test_spark_reads_postgres_through_the_cached_jdbc_driver(settings):
    spark = spark_session(settings, "test-spark-jdbc")
    try:
        df = (
            spark.read.format("jdbc")
            .option("url", settings.jdbc_url(settings.app_db))
            .option("user", settings.app_user)
            .option("password", settings.app_password.get_secret_value())
            .option("driver", "org.postgresql.Driver")
            .option("query", "SELECT 1::bigint AS one, 'x'::text AS t")
            .load()
        )
        assert [tuple(r) for r in df.collect()] == [(1, "x")]
    finally:
        spark.stop()


def test_feast_serve_answers_over_http(settings, tmp_path):
    with socket.socket() as probe:
        probe.bind((settings.redis_host, 0))
        port = probe.getsockname()[1]
    user_id = uuid.uuid4().int % 10**12
    feature_store(settings, "writer").push(
        decl.TRANSACTION_RISK.push_source,
        pd.DataFrame(
            [
                {
                    "user_id": user_id,
                    "txn_count_1h": 3,
                    "txn_amount_sum_1h": 120.25,
                    "txn_amount_max_24h": 99.5,
                    decl.EVENT_TIMESTAMP: datetime.now(UTC),
                }
            ]
        ),
    )
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([CDCF, "serve-features", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/get-online-features",
                    timeout=5,
                    json={
                        "feature_service": "fraud_detection_v1",  # with the transaction its request features need
                        "entities": {"user_id": [user_id], "amount": [300.0], "merchant": ["acme"]},
                    },
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "feast serve did not answer within 120 s"
                time.sleep(0.5)
        body = reply.raise_for_status().json()
        values = dict(zip(body["metadata"]["feature_names"], (r["values"][0] for r in body["results"]), strict=False))
        assert values["txn_count_1h"] == 3 and values["txn_amount_sum_1h"] == 120.25
        assert values["txn_amount_max_24h"] == 99.5 and values["txn_count_7d"] is None
        # the on-demand view, run by feast serve: 300 over the 24h maximum, and over an empty window's null average
        assert values["amount_over_txn_amount_max_24h"] == pytest.approx(300 / 99.5)
        assert values["amount_over_avg_order_value_30d"] is None
    finally:
        server.terminate()
        server.wait(timeout=30)
