"""Kafka clients of the pipeline's tools (confluent-kafka), configured in one place."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer

from cdcf.settings import Settings


def durable_producer(settings: Settings) -> Producer:
    """A producer whose acknowledged messages are on every in-sync replica, never written twice by its retries."""
    return Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True,
                     "log_level": 3})


def reader(settings: Settings, purpose: str) -> Consumer:
    """A consumer for assigned partitions that commits nothing (a group of its own, named after ``purpose``)."""
    return Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"cdcf-{purpose}-{uuid.uuid4()}",
                     "enable.auto.commit": False, "log_level": 3})
