"""Kafka clients of the pipeline, configured in one place: every client signs in with SASL/SCRAM as one of three
users, and the broker's ACLs (ops.stack.kafka) grant each what it needs:

- ``admin``: the super user (the broker itself, the stack's tools, the operator's commands);
- ``capture``: Connect and Debezium, which write the change topics;
- ``reader``: the archiver and the streaming job, which read them and write none (the archiver writes only the
  dead-letter topic).
"""

from __future__ import annotations

import uuid
from typing import Literal

from confluent_kafka import Consumer, Producer

from cdcf.settings import Settings

Role = Literal["admin", "capture", "reader"]
SCRAM = "SCRAM-SHA-512"
SECURITY_PROTOCOL = "SASL_PLAINTEXT"


def credentials(settings: Settings, role: Role) -> tuple[str, str]:
    """(user, password) of ``role``."""
    user, password = {
        "admin": (settings.kafka_admin_user, settings.kafka_admin_password),
        "capture": (settings.kafka_capture_user, settings.kafka_capture_password),
        "reader": (settings.kafka_reader_user, settings.kafka_reader_password),
    }[role]
    return user, password.get_secret_value()


def client_config(settings: Settings, role: Role) -> dict[str, str]:
    """confluent-kafka (librdkafka) settings: the broker and ``role``'s SASL/SCRAM sign-in."""
    user, password = credentials(settings, role)
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": SECURITY_PROTOCOL,
        "sasl.mechanisms": SCRAM,
        "sasl.username": user,
        "sasl.password": password,
    }


def jaas(module: str, user: str, password: str, **extra: str) -> str:
    """A JAAS line for Java clients and the broker (values quoted, their quotes and backslashes escaped)."""

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    options = {"username": user, "password": password, **extra}
    return f"{module} required " + " ".join(f"{k}={quoted(v)}" for k, v in options.items()) + ";"


def java_config(settings: Settings, role: Role) -> dict[str, str]:
    """Java client settings (Connect, Spark's Kafka source): ``role``'s SASL/SCRAM sign-in."""
    return {
        "security.protocol": SECURITY_PROTOCOL,
        "sasl.mechanism": SCRAM,
        "sasl.jaas.config": jaas(
            "org.apache.kafka.common.security.scram.ScramLoginModule", *credentials(settings, role)
        ),
    }


def spark_options(settings: Settings, role: Role) -> dict[str, str]:
    """Options of Spark's Kafka source and sink: the broker and ``role``'s sign-in (``kafka.``-prefixed)."""
    return {
        f"kafka.{k}": v
        for k, v in {"bootstrap.servers": settings.kafka_bootstrap, **java_config(settings, role)}.items()
    }


def durable_producer(settings: Settings, role: Role) -> Producer:
    """A producer whose acknowledged messages are on every in-sync replica, never written twice by its retries."""
    return Producer({**client_config(settings, role), "acks": "all", "enable.idempotence": True, "log_level": 3})


def producer(settings: Settings, role: Role, **options: object) -> Producer:
    """A plain producer signed in as ``role``; ``options`` add librdkafka settings."""
    return Producer({**client_config(settings, role), "log_level": 3, **options})


def consumer(settings: Settings, role: Role, group: str, **options: object) -> Consumer:
    """A consumer of ``group`` signed in as ``role``; ``options`` add librdkafka settings."""
    return Consumer({**client_config(settings, role), "group.id": group, "log_level": 3, **options})


def reader(settings: Settings, purpose: str, role: Role = "admin") -> Consumer:
    """A consumer for assigned partitions that commits nothing (a group of its own, named after ``purpose``)."""
    return consumer(settings, role, f"cdcf-{purpose}-{uuid.uuid4()}", **{"enable.auto.commit": False})
