"""Kafka (KRaft, combined broker + controller) and the Kafka Connect distributed worker, from Maven jars."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from cdcf.errors import ServiceError
from cdcf.jars import jar_files
from cdcf.kafka_clients import SCRAM, client_config, credentials, jaas, java_config
from cdcf.settings import Settings, write_private
from connectors.connect import connect_auth, connector_secrets_dir
from ops.stack import proc, supervisor

CONF = Path(__file__).with_name("conf")
KAFKA, CONNECT = "kafka", "connect"
DEBEZIUM_POSTGRES = "io.debezium.connector.postgresql.PostgresConnector"


def start_kafka(settings: Settings) -> None:
    props = _write_properties(settings, KAFKA, broker_properties(settings))
    data = settings.paths.data / KAFKA

    def format_storage_once() -> None:
        if not (data / "meta.properties").exists():
            _format_storage(settings, props)
            (data / USERS_MARKER).write_text("SCRAM users of the settings, made when this storage was formatted\n")
        elif not (data / USERS_MARKER).exists():
            raise ServiceError(
                f"Kafka's data in {data} predates its SASL/SCRAM users, which are made when storage "
                f"is formatted: run `cdcf down --purge` (it deletes the stack's data; `make up` then "
                f"captures every row again)."
            )

    _start_jvm(
        settings,
        KAFKA,
        props,
        settings.kafka_heap,
        "kafka.Kafka",
        kafka_health,
        ports=[
            (settings.kafka_port, "Kafka", "CDCF_KAFKA_PORT"),
            (settings.kafka_controller_port, "Kafka controller", "CDCF_KAFKA_CONTROLLER_PORT"),
        ],
        host=settings.kafka_host,
        before=format_storage_once,
    )
    ensure_acls(settings)


USERS_MARKER = "cdcf-scram-users"


def acl_rules(settings: Settings) -> list[tuple[str, str, str, str, str]]:
    """Who may do what (principal, resource type, pattern, name, operation), beyond the admin, a super user:
    capture (Connect and Debezium) writes the change topics and Connect's own; the reader (archiver and streaming
    job) reads the change topics and Connect's offsets, and writes the dead-letter topic only. Anyone else, and
    anything else, is refused."""
    capture, reader = f"User:{settings.kafka_capture_user}", f"User:{settings.kafka_reader_user}"
    group, prefix = settings.connect_group, settings.topic_prefix
    return [
        *[(capture, "topic", "prefixed", name, "all") for name in (prefix, "__debezium-heartbeat", f"{group}-")],
        (capture, "group", "literal", group, "all"),
        *[
            (capture, "cluster", "literal", "kafka-cluster", op)
            for op in ("describe", "describe_configs", "idempotent_write")
        ],
        *[(reader, "topic", "prefixed", prefix, op) for op in ("read", "describe")],
        *[(reader, "topic", "literal", settings.connect_offsets_topic, op) for op in ("read", "describe")],
        *[(reader, "topic", "literal", settings.dead_letter_topic, op) for op in ("write", "describe")],
        (reader, "group", "literal", settings.archive_group, "read"),
        (reader, "group", "prefixed", "spark-kafka-source-", "read"),
        (reader, "cluster", "literal", "kafka-cluster", "idempotent_write"),
    ]


def ensure_acls(settings: Settings) -> None:
    """Create the ACLs of ``acl_rules`` (creating one that exists changes nothing)."""
    kinds = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "cluster": ResourceType.BROKER,
    }  # librdkafka's name
    bindings = [
        AclBinding(
            kinds[kind],
            name,
            ResourcePatternType[pattern.upper()],
            principal,
            "*",
            AclOperation[op.upper()],
            AclPermissionType.ALLOW,
        )
        for principal, kind, pattern, name, op in acl_rules(settings)
    ]
    admin = _admin(settings)  # held until every future is done
    for binding, future in admin.create_acls(bindings).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            raise ServiceError(f"Could not create the Kafka ACL {binding}: {exc}") from exc


def _admin(settings: Settings, **options: object) -> AdminClient:
    return AdminClient({**client_config(settings, "admin"), "log_level": 0, **options})


def start_connect(settings: Settings) -> None:
    props = _write_properties(settings, CONNECT, worker_properties(settings))
    if settings.secrets_dir is None:  # the connector's password, as a secret file (connector_secrets_dir)
        write_private(
            connector_secrets_dir(settings) / "cdcf_debezium_password", settings.debezium_password.get_secret_value()
        )
    _start_jvm(
        settings,
        CONNECT,
        props,
        settings.connect_heap,
        "org.apache.kafka.connect.cli.ConnectDistributed",
        connect_health,
        ports=[(settings.connect_port, "Kafka Connect", "CDCF_CONNECT_PORT")],
        host=settings.connect_host,
        timeout_factor=2,
        jvm_options=[f"-Djava.security.auth.login.config={_write_rest_users(settings)}"],
    )


# Connect's REST API takes HTTP basic auth from this JAAS login module, which checks a properties file of
# user=password lines; the REST extension refuses every request without them.
BASIC_AUTH_EXTENSION = "org.apache.kafka.connect.rest.basic.auth.extension.BasicAuthSecurityRestExtension"
PROPERTY_FILE_LOGIN = "org.apache.kafka.connect.rest.basic.auth.extension.PropertyFileLoginModule"


def rest_users_file(settings: Settings) -> str:
    """The REST API's one user, in java.util.Properties syntax (every character escaped as \\uXXXX: no password
    can break the file)."""

    def escaped(text: str) -> str:
        units = text.encode("utf-16-be")  # Java's chars: a character past U+FFFF is two
        return "".join(f"\\u{int.from_bytes(units[i : i + 2]):04x}" for i in range(0, len(units), 2))

    return f"{escaped(settings.connect_user)}={escaped(settings.connect_password.get_secret_value())}\n"


def rest_jaas(users_file: str) -> str:
    """The JAAS configuration of Connect's REST login (section KafkaConnect), reading ``users_file``."""
    return f'KafkaConnect {{\n  {PROPERTY_FILE_LOGIN} required\n  file="{users_file}";\n}};\n'


def _write_rest_users(settings: Settings) -> Path:
    users = write_private(settings.paths.conf / "connect-rest-users.properties", rest_users_file(settings))
    return write_private(settings.paths.conf / "connect-rest.jaas", rest_jaas(str(users)))


def _start_jvm(
    settings: Settings,
    name: str,
    props: Path,
    heap: str,
    main: str,
    health: Callable[[Settings], str],
    *,
    ports: list[tuple[int, str, str]],
    host: str,
    before: Callable[[], None] | None = None,
    timeout_factor: float = 1,
    jvm_options: list[str] | None = None,
) -> None:
    """Start one JVM service, supervised, unless ours already runs: check its ports, spawn, wait until healthy."""
    if supervisor.running(settings.paths, name, service_pid(settings, name)):
        return
    for port, label, setting in ports:
        proc.require_free_port(host, port, label, setting)
    if before:
        before()
    supervisor.start_service(
        settings,
        name,
        _java(settings, name, heap, main, props, jvm_options=jvm_options),
        lambda: health(settings),
        timeout_s=settings.start_timeout_s * timeout_factor,
    )


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


def ensure_topics(
    settings: Settings, topics: list[str], partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    """Create the topics that do not exist yet (so consumers can subscribe before the first event); give every
    one of them ``config``."""
    admin = _admin(settings)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1, config=config or {}) for t in topics]
    )
    existing = []
    for topic, future in futures.items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"Could not create Kafka topic {topic}: {exc}") from exc
            existing.append(topic)
    if config and existing:  # topics made before this config existed
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                t,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
                ],
            )
            for t in existing
        ]
        for future in admin.incremental_alter_configs(resources).values():
            future.result(timeout=30)


def delete_topics(settings: Settings, topics: list[str]) -> None:
    """Delete the topics that exist (a benchmark's scratch topics)."""
    admin = _admin(settings)
    for topic, future in admin.delete_topics(topics, operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise ServiceError(f"Could not delete Kafka topic {topic}: {exc}") from exc


def kafka_health(settings: Settings) -> str:
    admin = _admin(settings, **{"socket.timeout.ms": 3000})
    meta = admin.list_topics(timeout=3)
    if not meta.brokers:
        raise ServiceError(f"Kafka at {settings.kafka_bootstrap} reports no broker.")
    return f"Kafka on {settings.kafka_bootstrap}, {len(meta.brokers)} broker, {len(meta.topics)} topic(s)"


def connect_health(settings: Settings) -> str:
    with httpx.Client(base_url=settings.connect_url, timeout=5, auth=connect_auth(settings)) as http:
        plugins = {p["class"] for p in http.get("/connector-plugins").raise_for_status().json()}
        connectors = http.get("/connectors", params={"expand": "status"}).raise_for_status().json()
    if DEBEZIUM_POSTGRES not in plugins:
        raise ServiceError(
            f"Kafka Connect at {settings.connect_url} does not list {DEBEZIUM_POSTGRES}; "
            f"check plugin.path ({settings.paths.jar_dir('plugin')})."
        )
    states = {
        name: [c["status"]["connector"]["state"], *(t["state"] for t in c["status"]["tasks"])]
        for name, c in sorted(connectors.items())
    }
    summary = ", ".join(f"{name}={'/'.join(s)}" for name, s in states.items()) or "none"
    if any(state != "RUNNING" for s in states.values() for state in s):
        raise ServiceError(
            f"Kafka Connect on {settings.connect_url}: not every connector and task is RUNNING "
            f"({summary}); see `cdcf connector status`."
        )
    return f"Kafka Connect on {settings.connect_url}, Debezium plugin loaded, connectors: {summary}"


def format_arguments(settings: Settings, props: str) -> str:
    """The storage tool's main class and arguments, in a Java argument file (its users' passwords stay off the
    command line): format for one combined node, with the SCRAM users of every role."""
    users = []
    for role in ("admin", "capture", "reader"):
        user, password = credentials(settings, role)
        if '"' in password or "\\" in password:
            raise ServiceError(
                f"The Kafka {role} password holds a quote or a backslash, which Kafka's storage tool "
                f"cannot take; choose another."
            )
        users += ["--add-scram", f'{SCRAM}=[name={user},password="{password}"]']
    args = [
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        f"--cluster-id={settings.kafka_cluster_id}",
        "-c",
        props,
        *users,
    ]
    return "\n".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in args) + "\n"


def _format_storage(settings: Settings, props: Path) -> None:
    argfile = write_private(settings.paths.conf / "kafka-format.args", format_arguments(settings, str(props)))
    try:
        done = subprocess.run(
            _java(settings, "kafka-storage", "256m", f"@{argfile}"), capture_output=True, text=True, check=False
        )
    finally:
        argfile.unlink()
    if done.returncode != 0:
        raise ServiceError(f"Formatting Kafka storage failed: {(done.stderr or done.stdout).strip()[-300:]}")


def _java(
    settings: Settings, name: str, heap: str, main: str, *args: object, jvm_options: list[str] | None = None
) -> list[str]:
    java = shutil.which(settings.java) or settings.java
    classpath = ":".join(str(j) for j in jar_files(settings, "kafka"))
    return [
        java,
        f"-Xmx{heap}",
        "-Xms64m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={CONF / 'log4j2.properties'}",
        f"-Dcdcf.service={name}",
        *(jvm_options or []),
        "-cp",
        classpath,
        main,
        *map(str, args),
    ]


def _write_properties(settings: Settings, name: str, props: dict[str, object]) -> Path:
    """A private .properties file (it holds the service's Kafka password)."""
    return write_private(settings.paths.conf / f"{name}.properties", properties_text(props))


def properties_text(props: dict[str, object]) -> str:
    """``props`` as a java.util.Properties file (backslashes escaped)."""
    return "".join(f"{k}={str(v).replace(chr(92), chr(92) * 2)}\n" for k, v in props.items())


def broker_properties(settings: Settings, bind: str | None = None, log_dirs: str | None = None) -> dict[str, object]:
    """The broker's properties (one combined KRaft node), listening on ``bind`` (default: its advertised host,
    kafka_host); compose runs the same with its container's address and volume."""
    host = settings.kafka_host
    return {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.bootstrap.servers": f"{host}:{settings.kafka_controller_port}",
        **_listeners(settings, bind or host, host),
        "log.dirs": log_dirs or settings.paths.data / KAFKA,
        "num.partitions": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "false",  # topics are made on purpose, by users allowed to
        "log.retention.hours": 168,
    }


def _listeners(settings: Settings, bind: str, advertised: str) -> dict[str, str]:
    """SASL everywhere: clients sign in with SCRAM (users made at format time) on the broker listener, which ACLs
    guard (StandardAuthorizer, no ACL no access); the controller listener takes the admin only (PLAIN, its one
    user in the listener's JAAS line). The admin is the broker's own identity and the only super user."""
    admin, password = credentials(settings, "admin")
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return {
        "listeners": f"SASL_PLAINTEXT://{bind}:{settings.kafka_port},CONTROLLER://{bind}:{settings.kafka_controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://{advertised}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": SCRAM,
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": java_config(settings, "admin")[
            "sasl.jaas.config"
        ],
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": jaas(plain, admin, password, **{f"user_{admin}": password}),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{admin}",
        "allow.everyone.if.no.acl.found": "false",
    }


def worker_properties(settings: Settings) -> dict[str, object]:
    group = settings.connect_group
    sign_in = java_config(settings, "capture")  # the worker's own clients and the connectors'
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        **{f"{prefix}{k}": v for prefix in ("", "producer.", "consumer.", "admin.") for k, v in sign_in.items()},
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
        # every plugin here (Debezium's, Kafka's own) ships ServiceLoader manifests, so the worker need not scan the
        # classpath reflectively as hybrid_warn does: 4.4 s to a healthy worker instead of 9.1 s on 2 idle cores
        "plugin.discovery": "service_load",
        "rest.extension.classes": BASIC_AUTH_EXTENSION,
        # connectors read secrets from files of this folder only: ${dir:<folder>:<file>}
        "config.providers": "dir",
        "config.providers.dir.class": "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
        "config.providers.dir.param.allowed.paths": connector_secrets_dir(settings),
    }
