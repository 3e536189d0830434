"""The Docker secrets of docker-compose.yml (`cdcf compose-secrets --gid G`): one file per secret under ./secrets
(mode 0640, group G, in a folder only its owner enters), from the same settings and generators as the local
stack, so both run with the same users, rules and passwords. Compose mounts each file at /run/secrets/<name> in
the containers that need it, which join group G; no secret is in an environment variable. Files already there are
kept (a database was initialized with them); delete one to make it anew.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cdcf.kafka_clients import java_config
from cdcf.redis_clients import acl_file
from cdcf.settings import SECRET_FIELDS, Settings, write_private
from cdcf.spark import spark_defaults
from ops.stack import certificates, kafka

IN_CONTAINER = Path("/run/secrets")
# the names clients dial PostgreSQL by: its compose service name, and loopback inside its own container
PG_NAMES = ["postgres", "localhost", "127.0.0.1"]
KAFKA_DATA = "/var/lib/kafka/data"
FEATURE_SERVER_PORT = 6566  # feast serve's, inside the network, and the proxy's, published


def compose_settings(settings: Settings) -> Settings:
    """The local settings (their secrets) with compose's host names."""
    return settings.model_copy(
        update={"pg_host": "postgres", "redis_host": "redis", "kafka_host": "kafka", "connect_host": "connect"}
    )


def files(settings: Settings) -> dict[str, str]:
    """Every secret file's name and content but the certificates, for the ``compose_settings`` of ``settings``."""
    settings = compose_settings(settings)
    kafka_props = str(IN_CONTAINER / "kafka_server_properties")
    derived = {
        "kafka_server_properties": kafka.properties_text(
            kafka.broker_properties(settings, bind="0.0.0.0", log_dirs=KAFKA_DATA)
        ),  # noqa: S104 (the container's own interfaces)
        "kafka_format_args": kafka.format_arguments(settings, kafka_props),
        "kafka_admin_client_properties": kafka.properties_text(java_config(settings, "admin")),
        "kafka_capture_jaas": java_config(settings, "capture")["sasl.jaas.config"],
        "redis_users_acl": acl_file(settings),
        "connect_rest_users": kafka.rest_users_file(settings),
        "connect_rest_jaas": kafka.rest_jaas(str(IN_CONTAINER / "connect_rest_users")),
        "spark_defaults_conf": spark_defaults(settings),
        "pg_admin_password": secrets.token_urlsafe(24),
        "grafana_admin_password": secrets.token_urlsafe(24),  # Grafana's `admin` (its UI on loopback)
        "feature_proxy_conf": feature_proxy_conf(settings.feature_server_token.get_secret_value()),
    }
    own = {f"cdcf_{field}": getattr(settings, field).get_secret_value() for field in SECRET_FIELDS}
    return {**own, **derived}


def feature_proxy_conf(token: str) -> str:
    """nginx in front of `feast serve`: /health open, everything else for the bearer token only."""
    return f"""pid /tmp/nginx.pid;
events {{}}
http {{
  client_body_temp_path /tmp/client_body;
  proxy_temp_path /tmp/proxy;
  server {{
    listen {FEATURE_SERVER_PORT};
    location = /health {{ proxy_pass http://feature-server:{FEATURE_SERVER_PORT}; }}
    location / {{
      if ($http_authorization != "Bearer {token}") {{ return 401; }}
      proxy_pass http://feature-server:{FEATURE_SERVER_PORT};
    }}
  }}
}}
"""


def write(settings: Settings, folder: Path, group: int) -> list[str]:
    """Write the files missing from ``folder`` (mode 0640, group ``group``: the containers that read them join it);
    return their names."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    written = []
    for name, text in files(settings).items():
        if not (folder / name).exists():
            write_private(folder / name, text, group)
            written.append(name)
    tls = folder / "tls"  # the CA's key stays here, mounted nowhere
    if not (tls / "server.crt").exists():
        tls.mkdir(mode=0o700, exist_ok=True)
        certificates.issue(tls, PG_NAMES)
        written.append("tls/")
    for name, source in (
        ("pg_server_crt", "server.crt"),
        ("pg_server_key", "server.key"),
        ("cdcf_pg_ca_crt", "ca.crt"),
    ):
        if not (folder / name).exists():
            write_private(folder / name, (tls / source).read_text(), group)
            written.append(name)
    return written
