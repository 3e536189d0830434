"""Kafka (KRaft, combined broker + controller) and the Kafka Connect distributed worker, from Maven jars."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from cdcf.errors import ServiceError
from cdcf.settings import Settings
from cdcf.stack import proc, supervisor
from cdcf.stack.jars import jar_files

CONF = Path(__file__).with_name("conf")
KAFKA, CONNECT = "kafka", "connect"
DEBEZIUM_POSTGRES = "io.debezium.connector.postgresql.PostgresConnector"


def start_kafka(settings: Settings) -> None:
    props = _write_properties(settings, KAFKA, _kafka_properties(settings))

    def format_storage_once() -> None:
        if not (settings.paths.data / KAFKA / "meta.properties").exists():
            _format_storage(settings, props)

    _start_jvm(settings, KAFKA, props, settings.kafka_heap, "kafka.Kafka", kafka_health,
               ports=[(settings.kafka_port, "Kafka", "CDCF_KAFKA_PORT"),
                      (settings.kafka_controller_port, "Kafka controller", "CDCF_KAFKA_CONTROLLER_PORT")],
               host=settings.kafka_host, before=format_storage_once)


def start_connect(settings: Settings) -> None:
    props = _write_properties(settings, CONNECT, _connect_properties(settings))
    # Connectors read the replication password through Connect's env config provider: ${env:...}.
    env = {"CDCF_DEBEZIUM_PASSWORD": settings.debezium_password.get_secret_value()}
    _start_jvm(settings, CONNECT, props, settings.connect_heap, "org.apache.kafka.connect.cli.ConnectDistributed",
               connect_health, ports=[(settings.connect_port, "Kafka Connect", "CDCF_CONNECT_PORT")],
               host=settings.connect_host, env=env, timeout_factor=2)


def _start_jvm(settings: Settings, name: str, props: Path, heap: str, main: str,
               health: Callable[[Settings], str], *, ports: list[tuple[int, str, str]], host: str,
               env: dict[str, str] | None = None, before: Callable[[], None] | None = None,
               timeout_factor: float = 1) -> None:
    """Start one JVM service, supervised, unless ours already runs: check its ports, spawn, wait until healthy."""
    if supervisor.running(settings.paths, name, service_pid(settings, name)):
        return
    for port, label, setting in ports:
        proc.require_free_port(host, port, label, setting)
    if before:
        before()
    supervisor.start_service(settings.paths, name, _java(settings, name, heap, main, props), lambda: health(settings),
                             timeout_s=settings.start_timeout_s * timeout_factor, env=env)


def stop(settings: Settings, name: str) -> None:
    supervisor.stop(settings.paths, name)
    pid = service_pid(settings, name)
    if pid:
        proc.stop_pid(pid, name, timeout_s=60)


def service_pid(settings: Settings, name: str) -> int | None:
    return proc.our_pid(settings.paths, name, str(settings.paths.conf / f"{name}.properties"))


# Change topics keep every row's latest change for good (older versions once they are a day old): the streaming
# job can rebuild its state from them on a fresh checkpoint, as the log of a table.
CHANGE_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(24 * 3600 * 1000)}


def ensure_topics(settings: Settings, topics: list[str], partitions: int = 1,
                  config: dict[str, str] | None = None) -> None:
    """Create the topics that do not exist yet (so consumers can subscribe before the first event); give every
    one of them ``config``."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1, config=config or {})
                                   for t in topics])
    existing = []
    for topic, future in futures.items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"Could not create Kafka topic {topic}: {exc}") from exc
            existing.append(topic)
    if config and existing:  # topics made before this config existed
        resources = [ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()])
            for t in existing]
        for topic, future in admin.incremental_alter_configs(resources).items():
            future.result(timeout=30)


def delete_topics(settings: Settings, topics: list[str]) -> None:
    """Delete the topics that exist (a benchmark's scratch topics)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    for topic, future in admin.delete_topics(topics, operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise ServiceError(f"Could not delete Kafka topic {topic}: {exc}") from exc


def kafka_health(settings: Settings) -> str:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "socket.timeout.ms": 3000, "log_level": 0})
    meta = admin.list_topics(timeout=3)
    if not meta.brokers:
        raise ServiceError(f"Kafka at {settings.kafka_bootstrap} reports no broker.")
    return f"Kafka on {settings.kafka_bootstrap}, {len(meta.brokers)} broker, {len(meta.topics)} topic(s)"


def connect_health(settings: Settings) -> str:
    with httpx.Client(base_url=settings.connect_url, timeout=5) as http:
        plugins = {p["class"] for p in http.get("/connector-plugins").raise_for_status().json()}
        connectors = http.get("/connectors", params={"expand": "status"}).raise_for_status().json()
    if DEBEZIUM_POSTGRES not in plugins:
        raise ServiceError(f"Kafka Connect at {settings.connect_url} does not list {DEBEZIUM_POSTGRES}; "
                           f"check plugin.path ({settings.paths.jar_dir('plugin')}).")
    states = {name: [c["status"]["connector"]["state"], *(t["state"] for t in c["status"]["tasks"])]
              for name, c in sorted(connectors.items())}
    summary = ", ".join(f"{name}={'/'.join(s)}" for name, s in states.items()) or "none"
    if any(state != "RUNNING" for s in states.values() for state in s):
        raise ServiceError(f"Kafka Connect on {settings.connect_url}: not every connector and task is RUNNING "
                           f"({summary}); see `cdcf connector status`.")
    return f"Kafka Connect on {settings.connect_url}, Debezium plugin loaded, connectors: {summary}"


def _format_storage(settings: Settings, props: Path) -> None:
    argv = _java(settings, "kafka-storage", "256m", "kafka.tools.StorageTool", "format", "--standalone",
                 f"--cluster-id={settings.kafka_cluster_id}", "-c", props)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceError(f"Formatting Kafka storage failed: {(done.stderr or done.stdout).strip()[-300:]}")


def _java(settings: Settings, name: str, heap: str, main: str, *args: object) -> list[str]:
    java = shutil.which(settings.java) or settings.java
    classpath = ":".join(str(j) for j in jar_files(settings, "kafka"))
    return [java, f"-Xmx{heap}", "-Xms64m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={CONF / 'log4j2.properties'}", f"-Dcdcf.service={name}",
            "-cp", classpath, main, *map(str, args)]


def _write_properties(settings: Settings, name: str, props: dict[str, object]) -> Path:
    path = settings.paths.conf / f"{name}.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def _kafka_properties(settings: Settings) -> dict[str, object]:
    host = settings.kafka_host
    return {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.bootstrap.servers": f"{host}:{settings.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": settings.paths.data / KAFKA,
        "num.partitions": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "log.retention.hours": 168,
    }


def _connect_properties(settings: Settings) -> dict[str, object]:
    group = settings.connect_group
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "config.storage.topic": f"{group}-configs",
        "offset.storage.topic": settings.connect_offsets_topic,
        "status.storage.topic": f"{group}-status",
        "config.storage.replication.factor": 1,
        "offset.storage.replication.factor": 1,
        "status.storage.replication.factor": 1,
        "offset.flush.interval.ms": 100,  # each commit moves the streaming job's clock (streaming/DESIGN.md)
        "listeners": f"http://{settings.connect_host}:{settings.connect_port}",
        "rest.advertised.host.name": settings.connect_host,
        "rest.advertised.port": settings.connect_port,
        "plugin.path": settings.paths.jar_dir("plugin"),
        "plugin.discovery": "hybrid_warn",
        "config.providers": "env",
        "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    }
