"""docker-compose.yml cannot run here (no Docker engine); these checks keep it honest against the settings."""

from __future__ import annotations

import re

import pytest
import yaml

from cdcf.settings import PROJECT_ROOT, Settings
from cdcf.stack import kafka, postgres, redis_server

SECRETS = {f: "x" for f in ("app_password", "debezium_password", "feast_password", "redis_password")}


class _Defaults(Settings):
    """The settings' own defaults: compose publishes those, whatever this shell's CDCF_* variables say."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):
        return (init_settings,)


DEFAULTS = _Defaults(**SECRETS)
COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENV_FILE = dict(line.split("=", 1) for line in (PROJECT_ROOT / ".env").read_text().splitlines()
                if line and not line.startswith("#"))


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def test_the_homelab_nodes_are_all_there():
    nodes = {s["labels"]["homelab.node"] for s in SERVICES.values()}
    assert nodes == {"cpu-node1", "cpu-node2", "worker-node3", "gpu-node"}
    assert {"postgres", "redis", "kafka", "connect", "spark-master", "feature-server"} <= {
        name for name, s in SERVICES.items() if s["labels"]["homelab.node"] == "cpu-node1"}
    workers = [n for n, s in SERVICES.items() if "org.apache.spark.deploy.worker.Worker" in s.get("command", [])]
    assert sorted(workers) == ["spark-worker-cpu-node2", "spark-worker-node3"]


def test_the_streaming_job_runs_its_executors_on_the_spark_workers():
    job = SERVICES["streaming"]
    assert job["command"][:2] == ["cdcf", "stream"]
    assert job["environment"]["CDCF_SPARK_MASTER"] == "spark://spark-master:7077"
    assert {"spark-master", "spark-worker-cpu-node2", "spark-worker-node3"} <= set(job["depends_on"])
    assert job["hostname"] == "streaming"  # the driver's name, resolvable from the workers
    assert int(job["environment"]["CDCF_STREAM_STATE_PARTITIONS"]) >= 8  # sized for the cluster, not one box
    checkpoint = "stream-data:/opt/pipeline/.stack/data"  # state written by the executors, read by any of them
    assert checkpoint in job["volumes"]
    assert all(checkpoint in SERVICES[w]["volumes"] for w in ("spark-worker-cpu-node2", "spark-worker-node3"))


def test_the_image_holds_everything_the_jobs_read_at_run_time():
    dockerfile = (PROJECT_ROOT / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    assert {"cdcf", "connectors", "schemas", "streaming", "batch", "feature_repo"} <= copied


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned_in_the_env_file(name):
    ref = re.fullmatch(r"\$\{(\w+)\}", SERVICES[name]["image"])
    assert ref, f"{name}: image must come from .env"
    image = ENV_FILE[ref.group(1)]
    repo, _, tag = image.rpartition(":")
    assert repo and tag and tag != "latest" and "/" not in tag, image


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_is_health_checked_and_waits_for_healthy_dependencies(name):
    service = SERVICES[name]
    assert service["healthcheck"]["test"], name
    for dependency, spec in service.get("depends_on", {}).items():
        assert dependency in SERVICES
        assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_published_ports_are_the_settings_defaults():
    published = {name: [p.split(":")[1] for p in s.get("ports", [])] for name, s in SERVICES.items()}
    assert published["postgres"] == [str(DEFAULTS.pg_port)]
    assert published["redis"] == [str(DEFAULTS.redis_port)]
    assert published["kafka"] == [str(DEFAULTS.kafka_port)]
    assert published["connect"] == [str(DEFAULTS.connect_port)]


def test_pipeline_environment_names_real_settings_with_the_default_ports():
    env = COMPOSE["x-pipeline-env"]
    fields = {f"CDCF_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert {k for k in _env("streaming") if k.startswith("CDCF_")} <= fields
    for key, value in env.items():
        if key.endswith("_PORT"):
            assert int(value) == getattr(DEFAULTS, key.removeprefix("CDCF_").lower()), key
    assert all(_env(name)["CDCF_REDIS_PASSWORD"].startswith("${CDCF_REDIS_PASSWORD:?")
               for name in ("spark-master", "feature-server"))


def test_postgres_runs_with_the_local_stacks_server_settings():
    flags = dict(re.findall(r"-c (\w+)=(\S+)", SERVICES["postgres"]["command"]))
    assert flags == postgres.server_settings(DEFAULTS)
    mounts = " ".join(SERVICES["postgres"]["volumes"])
    assert "cdcf/stack/roles.sql" in mounts and "cdcf/stack/app_schema.sql" in mounts


def test_redis_runs_with_the_local_stacks_durability_and_memory_settings():
    command = SERVICES["redis"]["command"]
    flags = {command[n].removeprefix("--"): command[n + 1] for n in range(1, len(command) - 1, 2)}
    assert {k: flags[k] for k in redis_server.server_settings(DEFAULTS)} == redis_server.server_settings(DEFAULTS)


def test_kafka_matches_the_local_broker_properties():
    env = _env("kafka")
    assert env["CLUSTER_ID"] == DEFAULTS.kafka_cluster_id
    local = kafka._kafka_properties(DEFAULTS)
    for key, value in env.items():
        prop = key.removeprefix("KAFKA_").lower().replace("_", ".")
        if key.startswith("KAFKA_") and prop in local and "listener" not in prop:
            assert str(local[prop]) == value, prop


def test_connect_matches_the_local_worker_properties():
    env = _env("connect")
    local = kafka._connect_properties(DEFAULTS)
    assert env["GROUP_ID"] == local["group.id"]
    assert env["CONFIG_STORAGE_TOPIC"] == local["config.storage.topic"]
    assert env["OFFSET_STORAGE_TOPIC"] == local["offset.storage.topic"]
    assert env["STATUS_STORAGE_TOPIC"] == local["status.storage.topic"]
    assert env["CONNECT_OFFSET_FLUSH_INTERVAL_MS"] == str(local["offset.flush.interval.ms"])
    assert env["KEY_CONVERTER"] == local["key.converter"] and env["VALUE_CONVERTER"] == local["value.converter"]
    assert env["CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE"] == local["value.converter.schemas.enable"]
    assert env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"] == local["config.providers.env.class"]
    assert "CDCF_DEBEZIUM_PASSWORD" in env


def test_every_service_is_restarted_when_it_dies():
    """Issue 14's supervision, in compose: docker restarts a dead service with backoff (as `make up`'s supervisor
    does locally), unless someone stopped it."""
    assert {name: s.get("restart") for name, s in SERVICES.items()} == {name: "unless-stopped" for name in SERVICES}
