"""docker-compose.yml cannot run here (no Docker engine); these checks keep it honest against the settings."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from cdcf.settings import PROJECT_ROOT, SECRET_FIELDS, Settings
from ops.stack import compose_secrets, kafka, postgres, redis_server

SECRETS = {f: "x" for f in SECRET_FIELDS}


class _Defaults(Settings):
    """The settings' own defaults: compose publishes those, whatever this shell's CDCF_* variables say."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):
        return (init_settings,)


DEFAULTS = _Defaults(**SECRETS)
COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENV_FILE = dict(
    line.split("=", 1) for line in (PROJECT_ROOT / ".env").read_text().splitlines() if line and not line.startswith("#")
)


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def test_the_homelab_nodes_are_all_there():
    nodes = {s["labels"]["homelab.node"] for s in SERVICES.values()}
    assert nodes == {"cpu-node1", "cpu-node2", "worker-node3", "gpu-node"}
    assert {"postgres", "redis", "kafka", "connect", "spark-master", "feature-server"} <= {
        name for name, s in SERVICES.items() if s["labels"]["homelab.node"] == "cpu-node1"
    }
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


PORT = re.compile(r"(?P<address>\$\{HOMELAB_BIND_IP:\?[^}]+\}|127\.0\.0\.1):(?P<host>\d+):(?P<container>\d+)")


def _published(service: str) -> list[re.Match]:
    return [PORT.fullmatch(p) for p in SERVICES[service].get("ports", [])]


def test_every_port_binds_to_the_lan_address_or_loopback_only():
    for name in SERVICES:
        assert all(_published(name)), f"{name} publishes {SERVICES[name].get('ports')}: not on HOMELAB_BIND_IP"
    lan = {name: [int(m["host"]) for m in _published(name) if "HOMELAB" in m["address"]] for name in SERVICES}
    assert {k: v for k, v in lan.items() if v} == {
        "postgres": [DEFAULTS.pg_port],
        "redis": [DEFAULTS.redis_port],
        "kafka": [DEFAULTS.kafka_port],
        "connect": [DEFAULTS.connect_port],
        "spark-master": [7077],
        "feature-proxy": [6566],
        "gpu-node": [6570],
    }
    assert [int(m["host"]) for m in _published("spark-master") if m["address"] == "127.0.0.1"] == [8080]  # no auth


def test_pipeline_environment_names_real_settings_with_the_default_ports():
    env = COMPOSE["x-pipeline-env"]
    fields = {f"CDCF_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert {k for k in _env("streaming") if k.startswith("CDCF_")} <= fields
    for key, value in env.items():
        if key.endswith("_PORT"):
            assert int(value) == getattr(DEFAULTS, key.removeprefix("CDCF_").lower()), key
    assert env["CDCF_SECRETS_DIR"] == "/run/secrets"


def test_no_secret_is_in_an_environment_variable_and_every_one_is_a_docker_secret():
    secret_names = {f"CDCF_{f.upper()}" for f in SECRET_FIELDS}
    for name in SERVICES:
        env = _env(name)
        assert not secret_names & set(env), name
        assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), name
    declared = set(COMPOSE["secrets"])
    assert {f"cdcf_{f}" for f in SECRET_FIELDS} <= declared
    assert all(spec["file"] == f"./secrets/{name}" for name, spec in COMPOSE["secrets"].items())
    used = {secret for service in SERVICES.values() for secret in service.get("secrets", [])}
    assert used == declared
    expected = set(compose_secrets.files(DEFAULTS)) | {"pg_server_crt", "pg_server_key", "cdcf_pg_ca_crt"}
    assert declared == expected  # what `cdcf compose-secrets` writes
    # the processes that load the settings (the master runs no pipeline code: its secret is spark-defaults.conf)
    pipeline = [n for n, s in SERVICES.items() if s["image"] == "${PIPELINE_IMAGE}" and n != "spark-master"]
    for name in pipeline:
        assert {f"cdcf_{f}" for f in SECRET_FIELDS} <= set(SERVICES[name]["secrets"]), name


def test_containers_run_as_non_root_users_that_can_read_their_secrets():
    for name, service in SERVICES.items():
        if service["image"] == "${PIPELINE_IMAGE}":
            assert service["user"] == "10001", name
        if service.get("secrets") and name != "postgres":  # postgres reads them as root, then drops to postgres
            assert service["group_add"] == ["${HOMELAB_SECRETS_GID:?the group of ./secrets}"], name
    assert (PROJECT_ROOT / "deploy" / "Dockerfile").read_text().rstrip().splitlines()[-2:][0].startswith("USER 10001")
    assert "unprivileged" in ENV_FILE["PROXY_IMAGE"]


def test_secret_files_are_written_for_their_group_only(tmp_path):
    written = compose_secrets.write(DEFAULTS, tmp_path / "secrets", os.getgid())
    folder = tmp_path / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    files = [p for p in folder.iterdir() if p.is_file()]
    assert {p.name for p in files} == set(COMPOSE["secrets"]) and len(written) == len(files) + 1  # and tls/
    assert all(p.stat().st_mode & 0o777 == 0o640 and p.stat().st_gid == os.getgid() for p in files)
    assert compose_secrets.write(DEFAULTS, folder, os.getgid()) == []  # kept: a database was made with them
    assert "user default off" in (folder / "redis_users_acl").read_text()
    assert "x" not in (folder / "redis_users_acl").read_text().split("#")[1].split()[0]  # a hash, not the password


def test_postgres_runs_with_the_local_stacks_server_settings_and_rules():
    flags = dict(re.findall(r"-c (\w+)=(\S+)", SERVICES["postgres"]["command"]))
    key = "/var/lib/postgresql/server"
    assert flags == {
        **postgres.server_settings(DEFAULTS),
        **postgres.tls_settings(f"{key}.crt", f"{key}.key"),
        "hba_file": "/etc/cdcf/pg_hba.conf",
    }
    mounts = " ".join(SERVICES["postgres"]["volumes"])
    assert "ops/stack/roles.sql" in mounts and "ops/stack/app_schema.sql" in mounts
    assert "./deploy/pg_hba.conf:/etc/cdcf/pg_hba.conf:ro" in mounts
    hba = (PROJECT_ROOT / "deploy" / "pg_hba.conf").read_text()
    assert hba.split("\n", 1)[1] == postgres.hba_rules(DEFAULTS)
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_admin_password"
    assert (
        _env("streaming") | COMPOSE["x-pipeline-env"]
        and COMPOSE["x-pipeline-env"]["CDCF_PG_CA_FILE"] == "/run/secrets/cdcf_pg_ca_crt"
    )


def test_redis_runs_with_the_local_stacks_users_durability_and_memory_settings():
    command = SERVICES["redis"]["command"]
    flags = {command[n].removeprefix("--"): command[n + 1] for n in range(1, len(command) - 1, 2)}
    assert {k: flags[k] for k in redis_server.server_settings(DEFAULTS)} == redis_server.server_settings(DEFAULTS)
    assert flags["aclfile"] == "/run/secrets/redis_users_acl" and "requirepass" not in flags


def test_kafka_runs_the_local_brokers_properties():
    assert "/run/secrets/kafka_server_properties" in SERVICES["kafka"]["entrypoint"][-1]
    assert "@/run/secrets/kafka_format_args" in SERVICES["kafka"]["entrypoint"][-1]
    composed = compose_secrets.compose_settings(DEFAULTS)
    text = compose_secrets.files(DEFAULTS)["kafka_server_properties"]
    theirs = dict(line.split("=", 1) for line in text.splitlines())
    ours = {k: str(v) for k, v in kafka.broker_properties(composed).items()}
    assert set(theirs) == set(ours)
    differing = {k for k in ours if theirs[k] != ours[k]}
    assert differing == {"listeners", "log.dirs"}, differing  # the container's interfaces and volume
    assert theirs["advertised.listeners"] == f"SASL_PLAINTEXT://kafka:{DEFAULTS.kafka_port}"
    assert theirs["allow.everyone.if.no.acl.found"] == "false" and theirs["auto.create.topics.enable"] == "false"


def test_connect_matches_the_local_worker_properties():
    env = _env("connect")
    local = kafka.worker_properties(DEFAULTS)
    assert env["GROUP_ID"] == local["group.id"]
    assert env["CONFIG_STORAGE_TOPIC"] == local["config.storage.topic"]
    assert env["OFFSET_STORAGE_TOPIC"] == local["offset.storage.topic"]
    assert env["STATUS_STORAGE_TOPIC"] == local["status.storage.topic"]
    assert env["CONNECT_OFFSET_FLUSH_INTERVAL_MS"] == str(local["offset.flush.interval.ms"])
    assert env["KEY_CONVERTER"] == local["key.converter"] and env["VALUE_CONVERTER"] == local["value.converter"]
    assert env["CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE"] == local["value.converter.schemas.enable"]
    assert env["CONNECT_CONFIG_PROVIDERS_DIR_CLASS"] == local["config.providers.dir.class"]
    assert env["CONNECT_REST_EXTENSION_CLASSES"] == local["rest.extension.classes"]
    for prefix in ("", "producer.", "consumer.", "admin."):
        for key in ("security.protocol", "sasl.mechanism"):
            assert env[f"CONNECT_{(prefix + key).upper().replace('.', '_')}"] == local[prefix + key]
        assert (
            env[f"CONNECT_{(prefix + 'sasl.jaas.config').upper().replace('.', '_')}"]
            == "$${dir:/run/secrets:kafka_capture_jaas}"
        )  # compose's $$: a literal $
    assert compose_secrets.files(DEFAULTS)["kafka_capture_jaas"] == local["sasl.jaas.config"]


def test_spark_daemons_and_the_feature_server_are_guarded():
    for name in ("spark-master", "spark-worker-cpu-node2", "spark-worker-node3"):
        command = SERVICES[name]["command"]
        assert command[command.index("--properties-file") + 1] == "/run/secrets/spark_defaults_conf", name
    assert "ports" not in SERVICES["feature-server"]  # the LAN reaches it through the proxy only
    proxy = compose_secrets.feature_proxy_conf("t0ken")
    assert 'if ($http_authorization != "Bearer t0ken") { return 401; }' in proxy


def test_every_service_is_restarted_when_it_dies():
    """Issue 14's supervision, in compose: docker restarts a dead service with backoff (as `make up`'s supervisor
    does locally), unless someone stopped it."""
    assert {name: s.get("restart") for name, s in SERVICES.items()} == {name: "unless-stopped" for name in SERVICES}
