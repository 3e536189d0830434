"""Redis from Debian's package, run as our own process with its ACL users (cdcf.redis_clients)."""

from __future__ import annotations

import shutil

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cdcf.errors import ServiceError
from cdcf.redis_clients import acl_file, redis_client
from cdcf.settings import Settings, write_private
from ops.stack import proc, supervisor

NAME = "redis"


def start(settings: Settings) -> None:
    paths = settings.paths
    conf = _write_conf(settings)
    if supervisor.running(paths, NAME, pid(settings)):
        return
    binary = shutil.which("redis-server") or "redis-server"
    proc.require_free_port(settings.redis_host, settings.redis_port, "Redis", "CDCF_REDIS_PORT")
    supervisor.start_service(
        settings, NAME, [binary, str(conf)], lambda: client(settings).ping(), timeout_s=settings.start_timeout_s
    )


def stop(settings: Settings) -> None:
    supervisor.stop(settings.paths, NAME)
    running = pid(settings)
    if running:
        proc.stop_pid(running, NAME)


def pid(settings: Settings) -> int | None:
    # redis-server replaces its command line with "redis-server <host>:<port>"
    return proc.our_pid(settings.paths, NAME, f"redis-server {settings.redis_host}:{settings.redis_port}")


def client(settings: Settings) -> redis.Redis:
    """For probes, which poll on their own: one try each (redis-py's default retries a refused connection for
    about 8 s, which `cdcf status` of a stopped stack waited out)."""
    return redis_client(settings, "writer", socket_timeout=3, retry=Retry(NoBackoff(), 0))


def health(settings: Settings) -> str:
    try:
        info = client(settings).info("server") | client(settings).info("memory")
    except redis.AuthenticationError as exc:
        raise ServiceError(
            f"Redis at {settings.redis_host}:{settings.redis_port} rejected the password of user "
            f"{settings.redis_user}; unset CDCF_REDIS_PASSWORD or set it to the value in {settings.paths.secrets}."
        ) from exc
    where = f"{settings.redis_host}:{settings.redis_port}"
    return f"Redis {info['redis_version']} on {where}, {info['used_memory_human']} used"


def _conf_path(settings: Settings):
    return settings.paths.conf / "redis.conf"


def server_settings(settings: Settings) -> dict[str, str]:
    """Durability and memory, the same locally and in compose: every acknowledged write is in the append-only file
    within a second, and a full Redis refuses writes instead of evicting features."""
    return {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "300 1",
        "maxmemory": f"{settings.redis_max_memory_mb}mb",
        "maxmemory-policy": "noeviction",
    }


def _write_conf(settings: Settings):
    paths = settings.paths
    data = paths.data / NAME
    data.mkdir(parents=True, exist_ok=True)
    acl = write_private(paths.conf / "redis-users.acl", acl_file(settings))
    lines = [
        f"bind {settings.redis_host}",
        f"port {settings.redis_port}",
        f"aclfile {acl}",
        "protected-mode yes",
        "daemonize no",
        f"dir {data}",
        "loglevel notice",
        *(f"{k} {v}" for k, v in server_settings(settings).items()),
    ]
    return write_private(_conf_path(settings), "\n".join(lines) + "\n")
