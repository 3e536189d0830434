"""Intrusions (`python -m bench.run --only security`, and tests/integration/test_security.py): what someone on the
LAN, or a component holding the wrong credentials, would try against the stack. Each attempt first makes the same
request with the right credentials, which must succeed (so a refusal is never a service that is down or broken),
then the intrusion, which must be refused; it returns how it was refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psycopg2
import redis
from confluent_kafka import Producer, TopicPartition

from cdcf import features as decl
from cdcf import kafka_clients, pg_clients
from cdcf.contracts import change_topic
from cdcf.redis_clients import redis_client
from cdcf.settings import Settings
from connectors.connect import ConnectClient
from ops.stack import proc, spark_cluster

SPARK_PORT, SPARK_UI = 17177, 18190  # below the ephemeral range; the worker's UI takes the next port


class NotRefused(AssertionError):
    """An intrusion went through."""


def _produce(config: dict, topic: str) -> str | None:
    """Produce one message; the delivery error, or None once it is delivered."""
    outcome: list = []
    producer = Producer({**config, "message.timeout.ms": 8000, "log_level": 0})
    producer.produce(topic, key=b"intruder", value=b'{"op": "d"}', on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(15)
    if not outcome:
        return "no delivery report within 15 s"
    return str(outcome[0]) if outcome[0] else None


def _change_topic(settings: Settings) -> str:
    return change_topic(settings.topic_prefix, "transactions")


def _kafka_produce_by_reader(settings: Settings) -> str:
    """The streaming job's user (the reader) reads a change topic, and the broker refuses its produce."""
    consumer = kafka_clients.reader(settings, "intrusion-check", "reader")
    try:
        consumer.get_watermark_offsets(TopicPartition(_change_topic(settings), 0), timeout=10)  # it reads
    finally:
        consumer.close()
    error = _produce(kafka_clients.client_config(settings, "reader"), _change_topic(settings))
    if error is None:
        raise NotRefused(f"the reader produced to {_change_topic(settings)}")
    return error


def _kafka_produce_anonymously(settings: Settings) -> str:
    """A client with no credentials (PLAINTEXT, as the broker once took) gets no change event in: the broker
    speaks SASL only, so the message never leaves the client."""
    admin = kafka_clients.reader(settings, "intrusion-check", "admin")
    try:
        admin.list_topics(timeout=10)  # the broker is up
    finally:
        admin.close()
    error = _produce({"bootstrap.servers": settings.kafka_bootstrap}, _change_topic(settings))
    if error is None:
        raise NotRefused(f"an anonymous client produced to {_change_topic(settings)}")
    return error


def _connect_put_without_credentials(settings: Settings) -> str:
    ConnectClient(settings).list()  # the operator gets in
    name = f"intruder-{time.time_ns()}"
    reply = httpx.put(
        f"{settings.connect_url}/connectors/{name}/config",
        timeout=10,
        json={
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "file": "/etc/passwd",
            "topic": "stolen",
        },
    )
    if reply.status_code != 401 or name in ConnectClient(settings).list():
        raise NotRefused(f"PUT of a connector without credentials: {reply.status_code} {reply.text[:200]}")
    return f"{reply.status_code} {reply.reason_phrase}"


def _redis_write_by_reader(settings: Settings) -> str:
    key = f"cdcf-intrusion-{time.time_ns()}"
    writer, reader = redis_client(settings, "writer"), redis_client(settings, "reader")
    try:
        writer.hset(key, "f", "v")
        if reader.hget(key, "f") != b"v":  # the reader reads
            raise NotRefused("the reader could not read what the writer wrote")
        try:
            reader.hset(key, "f", "forged")
        except redis.exceptions.NoPermissionError as exc:
            if writer.hget(key, "f") != b"v":
                raise NotRefused("the reader's refused write changed the value") from exc
            return str(exc).split(".")[0]
        raise NotRefused("the reader user wrote a feature")
    finally:
        writer.delete(key)
        writer.close()
        reader.close()


def _feast_push_as_reader(settings: Settings) -> str:
    """What `feast serve`'s /push would do with a forged feature row: its store signs in as the reader."""
    import pandas as pd
    from feast.data_source import PushMode

    from cdcf.feast_config import feature_store

    view = decl.TRANSACTION_RISK
    entity = 10**15 + time.time_ns() % 10**9  # an entity of its own: nothing else writes it
    row = pd.DataFrame(
        [
            {
                view.entity.join_key: entity,
                decl.EVENT_TIMESTAMP: pd.Timestamp.now(tz="UTC"),
                **{f.name: 1 if f.dtype == "int64" else 1.0 for f in view.features},
            }
        ]
    )
    try:
        feature_store(settings).push(view.push_source, row, to=PushMode.ONLINE)
    except redis.exceptions.NoPermissionError as exc:
        served = (
            feature_store(settings)
            .get_online_features(
                features=[f"{view.name}:{view.features[0].name}"], entity_rows=[{view.entity.join_key: entity}]
            )
            .to_dict()
        )
        if served[view.features[0].name] != [None]:
            raise NotRefused(f"the refused push was served: {served}") from exc
        return str(exc).rsplit("error: ", 1)[-1]  # the pipeline's reason, not its (binary) command
    raise NotRefused("Feast pushed a row to Redis as the reader")


def _redis_without_user(settings: Settings) -> str:
    redis_client(settings, "reader").ping()
    anonymous = redis.Redis(host=settings.redis_host, port=settings.redis_port, socket_timeout=3)
    try:
        anonymous.keys("*")
    except redis.AuthenticationError as exc:
        return str(exc)
    finally:
        anonymous.close()
    raise NotRefused("Redis answered a command from no user")


def _scoring_without_token(settings: Settings) -> str:
    """The scoring service's real app, with a model for transaction_risk (its weights untrained: the token is
    checked before any model runs) and the real feature client."""
    from fastapi.testclient import TestClient

    from inference.model import train
    from inference.service import ScoringService, create_app
    from online.client import FeatureClient

    features = [(decl.TRANSACTION_RISK.name, f.name) for f in decl.TRANSACTION_RISK.features]
    rng = np.random.default_rng(0)
    model = train(
        rng.random((64, len(features))),
        rng.integers(0, 2, 64).astype(float),
        service="intrusion",
        features=features,
        label="intrusion",
        epochs=1,
    )
    service = ScoringService(model, FeatureClient.for_features(settings, features))
    token = settings.scoring_token.get_secret_value()
    app = create_app(token, scoring=service)
    allowed = TestClient(app, headers={"Authorization": f"Bearer {token}"}).post("/score", json={"ids": [1]})
    if allowed.status_code != 200:
        raise NotRefused(f"the scoring service refused its own token: {allowed.status_code} {allowed.text[:200]}")
    refused = TestClient(app).post("/score", json={"ids": [1]})
    if refused.status_code != 401:
        raise NotRefused(f"a request without the token got {refused.status_code}")
    return f"{refused.status_code}: {refused.json()['error']}"


def _postgres_without_tls(settings: Settings) -> str:
    pg_clients.connect(settings, timeout_s=5).close()
    try:
        psycopg2.connect(settings.pg_dsn() + " sslmode=disable", connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        if "no encryption" not in str(exc):
            raise
        return str(exc).strip().splitlines()[-1].split("FATAL:")[-1].strip()
    raise NotRefused("PostgreSQL accepted a connection without TLS")


# A driver that runs one job on a master; it reads a secret from stdin and joins with it when there is one.
DRIVER = """
import sys
from pyspark.sql import SparkSession
secret = sys.stdin.read().strip()
builder = SparkSession.builder.master(sys.argv[1]).appName(sys.argv[2]).config("spark.ui.enabled", "false")
if secret:
    builder = builder.config("spark.authenticate", "true").config("spark.authenticate.secret", secret)
print("counted", builder.getOrCreate().range(10).count(), flush=True)
"""
SASL_REFUSAL = "Expected SaslMessage"  # the master's log line for a client that does not authenticate


def _spark_job_without_secret(settings: Settings) -> str:
    """On a standalone master and worker holding the settings' secret: a driver with the secret runs its job; one
    without it is refused at the master (its log shows the refusal) and never registers."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    with (
        tempfile.TemporaryDirectory(prefix="cdcf-spark-auth-") as tmp,
        spark_cluster.standalone(settings, Path(tmp), SPARK_PORT, SPARK_UI, workers=1) as cluster,
    ):
        control = subprocess.run(
            [sys.executable, "-c", DRIVER, cluster.url, "control"],
            env=env,
            text=True,
            input=settings.spark_secret.get_secret_value(),
            capture_output=True,
            timeout=180,
        )
        if "counted 10" not in control.stdout:
            raise NotRefused(f"a driver with the secret could not run its job: {control.stderr[-500:]}")
        intruder = subprocess.Popen(
            [sys.executable, "-c", DRIVER, cluster.url, "intruder"],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        intruder.stdin.close()  # no secret
        master_log = Path(tmp) / "master.log"
        try:
            proc.wait_until(
                lambda: SASL_REFUSAL in master_log.read_text(),
                timeout_s=120,
                what="the master to refuse a driver without the secret",
                log_file=master_log,
            )
        finally:
            intruder.kill()
            intruder.wait()
            counted = intruder.stdout.read()
        state = spark_cluster.master_state(SPARK_UI)
        apps = {a["name"] for a in state["activeapps"] + state["completedapps"]}
        if "intruder" in apps or "counted" in counted:
            raise NotRefused(f"a driver without the secret registered or ran (apps {sorted(apps)})")
        return f"the master: {SASL_REFUSAL} (the driver never registered; {sorted(apps)} did)"


ATTEMPTS: dict[str, Callable[[Settings], str]] = {
    "anonymous Kafka produce": _kafka_produce_anonymously,
    "Kafka produce to a change topic by the reader": _kafka_produce_by_reader,
    "connector PUT without credentials": _connect_put_without_credentials,
    "Spark job without the secret": _spark_job_without_secret,
    "Redis write by the reader user": _redis_write_by_reader,
    "Redis command with no user": _redis_without_user,
    "Feast push (feast serve's /push) as the reader": _feast_push_as_reader,
    "scoring request without a token": _scoring_without_token,
    "PostgreSQL connection without TLS": _postgres_without_tls,
}


def run(settings: Settings) -> dict:
    """Every attempt; the counts (``intrusions_refused`` must equal ``intrusions_tried``) and how each ended."""
    outcomes = {}
    for name, attempt in ATTEMPTS.items():
        try:
            outcomes[name] = {"refused": True, "how": attempt(settings)}
        except NotRefused as exc:
            outcomes[name] = {"refused": False, "how": str(exc)}
    return {
        "intrusions_tried": len(outcomes),
        "intrusions_refused": sum(o["refused"] for o in outcomes.values()),
        "attempts": outcomes,
    }
