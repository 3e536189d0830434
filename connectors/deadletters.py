"""The dead-letter topic: list what it holds, and send dead letters back through the pipeline once the contract
that refused them is fixed.

A dead letter carries its reason and where its message came from (topic, partition, offset), with the message
capped in size. ``replay`` reads each original message from its change topic, decodes it with the decoder as it
is now, and produces the ones that now decode to their topic again: the archiver and the streaming job then take
them as they take any re-delivered change (the archive's key and the engine's LSNs make a second copy a no-op).
A letter whose change is already archived, that still fails (with today's reason), or whose original message is
gone from Kafka (past retention) is reported and left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition

from cdcf import pg_clients
from cdcf.changelog import TABLE as CHANGELOG
from cdcf.decoder import Change, DeadLetter, Position, decode
from cdcf.kafka_clients import durable_producer, reader
from cdcf.settings import Settings

READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Letter:
    offset: int  # on the dead-letter topic
    reason: str
    source: Position
    failed_at: str


@dataclass
class Replayed:
    sent: list[Letter] = field(default_factory=list)
    archived: list[Letter] = field(default_factory=list)  # its change is in the archive already
    invalid: list[tuple[Letter, str]] = field(default_factory=list)  # with the reason it fails for today
    gone: list[Letter] = field(default_factory=list)  # its original message is past Kafka's retention


def letters(settings: Settings) -> Iterator[Letter]:
    """Every dead letter on the topic, oldest first (read without a consumer group: nothing is committed)."""
    for message in _read_all(settings, settings.dead_letter_topic):
        try:
            body = json.loads(message.value())
            source = Position(body["topic"], int(body["partition"]), int(body["offset"]))
            yield Letter(message.offset(), str(body["reason"]), source, str(body.get("failed_at")))
        except (ValueError, KeyError, TypeError):
            yield Letter(message.offset(), "not a dead letter of this pipeline", Position("?", -1, -1), "?")


def replay(settings: Settings, dry_run: bool = False) -> Replayed:
    """Send every dead letter that now decodes back to its change topic (``dry_run``: only say which would go)."""
    result = Replayed()
    consumer = reader(settings, "dead-letters")
    producer = durable_producer(settings, "admin")
    db = pg_clients.connect_offline(settings)
    try:
        for letter in letters(settings):
            if letter.source.partition < 0:
                result.invalid.append((letter, letter.reason))
                continue
            original = _message_at(consumer, letter.source)
            if original is None:
                result.gone.append(letter)
                continue
            decoded = decode(settings.topic_prefix, letter.source, original.key(), original.value())
            if isinstance(decoded, DeadLetter) or decoded is None:
                result.invalid.append((letter, decoded.reason if decoded else "a tombstone"))
            elif _archived(db, decoded):
                result.archived.append(letter)
            else:
                if not dry_run:
                    producer.produce(
                        letter.source.topic,
                        key=original.key(),
                        value=original.value(),
                        headers={"cdcf-replayed-from": f"{settings.dead_letter_topic}:{letter.offset}"},
                    )
                result.sent.append(letter)
        if producer.flush(30) > 0:
            raise RuntimeError("Kafka did not acknowledge the replayed changes within 30 s")
    finally:
        consumer.close()
        db.close()
    return result


def _archived(db, change: Change) -> bool:
    with db, db.cursor() as cur:
        cur.execute(
            f"SELECT 1 FROM {CHANGELOG} WHERE source_table = %s AND row_key = %s AND lsn = %s AND op = %s",
            (change.table, change.key, change.lsn, change.op),
        )
        return cur.fetchone() is not None


def _read_all(settings: Settings, topic: str):
    """Every message of ``topic`` up to its end as of now."""
    consumer = reader(settings, "dead-letters")
    try:
        metadata = consumer.list_topics(topic, timeout=READ_TIMEOUT_S).topics[topic]
        if metadata.error is not None:
            return
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=READ_TIMEOUT_S)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        while ends:
            message = consumer.poll(READ_TIMEOUT_S)
            if message is None:
                raise RuntimeError(f"reading {topic} stalled with partitions {sorted(ends)} not read to their end")
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {topic}: {message.error()}")
                continue
            yield message
            if message.offset() + 1 >= ends.get(message.partition(), 0):
                ends.pop(message.partition(), None)
    finally:
        consumer.close()


def _message_at(consumer: Consumer, at: Position):
    """The message at a position, or None when Kafka no longer holds it."""
    low, high = consumer.get_watermark_offsets(TopicPartition(at.topic, at.partition), timeout=READ_TIMEOUT_S)
    if not low <= at.offset < high:
        return None
    consumer.assign([TopicPartition(at.topic, at.partition, at.offset)])
    message = consumer.poll(READ_TIMEOUT_S)
    if message is None or message.error() or message.offset() != at.offset:
        return None
    return message
