"""The Debezium connector for `app` (``debezium-app.json`` + the settings) and a Kafka Connect REST client."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from cdcf import features
from cdcf.contracts import HEARTBEAT, SCHEMA, change_topic
from cdcf.errors import PipelineError
from cdcf.settings import Settings

log = logging.getLogger(__name__)

CONFIG_FILE = Path(__file__).with_name("debezium-app.json")


class ConnectorError(PipelineError):
    """Kafka Connect refused a request or a connector did not reach the wanted state."""


def connector_config(settings: Settings, **overrides: str) -> tuple[str, dict[str, str]]:
    """Name and config of the app connector: the JSON file, plus what comes from the settings."""
    spec = json.loads(CONFIG_FILE.read_text())
    config = {
        **spec["config"],
        "database.hostname": settings.pg_host,
        "database.port": str(settings.pg_port),
        "database.user": settings.debezium_user,
        "database.password": f"${{dir:{connector_secrets_dir(settings)}:cdcf_debezium_password}}",
        "database.dbname": settings.app_db,
        "database.sslmode": settings.pg_sslmode,
        "database.sslrootcert": settings.pg_tls["sslrootcert"],
        "publication.name": settings.publication,
        "slot.name": settings.replication_slot,
        "topic.prefix": settings.topic_prefix,
        "table.include.list": ",".join(f"{SCHEMA}.{t}" for t in captured_tables()),
        **overrides,
    }
    return overrides.get("name", spec["name"]), config


def connector_secrets_dir(settings: Settings) -> Path:
    """Where Connect reads the connector's password (its directory config provider): the settings' secret files
    (compose: /run/secrets), or a private folder the local stack writes."""
    return settings.secrets_dir or settings.paths.conf / "connect-secrets"


def captured_tables() -> list[str]:
    """The source tables, and the heartbeat table whose commits keep the streaming job's clock moving."""
    return [t.name for t in features.TABLES] + [HEARTBEAT]


def change_topics(settings: Settings) -> list[str]:
    return [change_topic(settings.topic_prefix, t) for t in captured_tables()]


def connect_auth(settings: Settings) -> httpx.BasicAuth:
    """The operator's credentials: Connect's REST API refuses every request without them (HTTP basic auth)."""
    return httpx.BasicAuth(settings.connect_user, settings.connect_password.get_secret_value())


class ConnectClient:
    """Kafka Connect's REST API (PUT config, status, restart, pause/resume/stop, delete, offsets)."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.url = settings.connect_url
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, auth=connect_auth(settings))

    def apply(self, name: str, config: dict[str, str], timeout_s: float = 60.0) -> dict[str, Any]:
        """Create or update (idempotent), then wait until the connector and its tasks are RUNNING. A config that is
        already the connector's is not written again: Connect restarts a connector on every write, and a status read
        just after one can still show the state from before that restart."""
        try:
            current = self.config(name)
        except ConnectorError:  # no such connector yet
            current = None
        if current != {**config, "name": name}:
            self.write_config(name, config)
        return self.wait_running(name, timeout_s)

    def write_config(self, name: str, config: dict[str, str]) -> None:
        """Create or update, without waiting (a stopped connector stays stopped)."""
        self._call("PUT", f"/connectors/{name}/config", json=config)

    def wait_running(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status(name)
            except ConnectorError:
                last = {}
            tasks = last.get("tasks", [])
            if (
                last.get("connector", {}).get("state") == "RUNNING"
                and tasks
                and all(t["state"] == "RUNNING" for t in tasks)
            ):
                return last
            if any(t["state"] == "FAILED" for t in tasks):
                break
            time.sleep(0.5)
        raise ConnectorError(
            f"Connector {name} is not RUNNING after {timeout_s:.0f} s: {_describe(last)}. "
            f"See `cdcf connector status` and the Connect log."
        )

    def status(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/connectors/{name}/status")

    def config(self, name: str) -> dict[str, str]:
        return self._call("GET", f"/connectors/{name}/config")

    def list(self) -> list[str]:
        return self._call("GET", "/connectors")

    def restart(self, name: str, only_failed: bool = True) -> dict[str, Any]:
        params = {"includeTasks": "true", "onlyFailed": str(only_failed).lower()}
        return self._call("POST", f"/connectors/{name}/restart", params=params)

    def pause(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/pause")

    def resume(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/resume")

    def stop(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/stop")

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/connectors/{name}")

    def offsets(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/connectors/{name}/offsets")

    def reset_offsets(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Stop the connector, delete its source offsets (the next start snapshots again), leave it STOPPED."""
        self.stop(name)
        deadline = time.monotonic() + timeout_s
        while self.status(name)["connector"]["state"] != "STOPPED":
            if time.monotonic() > deadline:
                raise ConnectorError(f"Connector {name} did not stop within {timeout_s:.0f} s.")
            time.sleep(0.5)
        return self._call("DELETE", f"/connectors/{name}/offsets")

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectorError(f"Kafka Connect at {self.url} is not reachable ({exc}); run `make up`.") from exc
        if reply.status_code == 401:
            raise ConnectorError(
                f"Kafka Connect at {self.url} refused the operator's credentials (401): "
                f"CDCF_CONNECT_USER and CDCF_CONNECT_PASSWORD must be the stack's (secrets.env)."
            )
        if reply.status_code >= 400:
            try:
                message = reply.json().get("message", reply.text)
            except ValueError:
                message = reply.text
            raise ConnectorError(f"{method} {path} failed with {reply.status_code}: {message}")
        return reply.json() if reply.content else None


def _describe(status: dict[str, Any]) -> str:
    if not status:
        return "no status (the connector does not exist)"
    parts = [f"connector {status['connector']['state']}"]
    for task in status.get("tasks", []):
        trace = (task.get("trace") or "").strip().splitlines()
        parts.append(f"task {task['id']} {task['state']}" + (f" ({trace[0][:300]})" if trace else ""))
    return ", ".join(parts)
