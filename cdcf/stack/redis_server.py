"""Redis from Debian's package, run as our own process with AUTH."""

from __future__ import annotations

import shutil

import redis

from cdcf.errors import ServiceError
from cdcf.settings import Settings
from cdcf.stack import proc

NAME = "redis"


def start(settings: Settings) -> None:
    paths = settings.paths
    conf = _write_conf(settings)
    if pid(settings):
        return
    binary = shutil.which("redis-server") or "redis-server"
    proc.require_free_port(settings.redis_host, settings.redis_port, "Redis", "CDCF_REDIS_PORT")
    started = proc.spawn(paths, NAME, [binary, str(conf)])
    proc.wait_until(lambda: client(settings).ping(), timeout_s=settings.start_timeout_s, what="Redis",
                    log_file=paths.log(NAME), pid=started)


def stop(settings: Settings) -> None:
    running = pid(settings)
    if running:
        proc.stop_pid(running, NAME)


def pid(settings: Settings) -> int | None:
    # redis-server replaces its command line with "redis-server <host>:<port>"
    return proc.our_pid(settings.paths, NAME, f"redis-server {settings.redis_host}:{settings.redis_port}")


def client(settings: Settings) -> redis.Redis:
    return redis.Redis(host=settings.redis_host, port=settings.redis_port,
                       password=settings.redis_password.get_secret_value(), socket_timeout=3)


def health(settings: Settings) -> str:
    try:
        info = client(settings).info("server") | client(settings).info("memory")
    except redis.AuthenticationError as exc:
        raise ServiceError(
            f"Redis at {settings.redis_host}:{settings.redis_port} rejected the password; unset CDCF_REDIS_PASSWORD "
            f"or set it to the value in {settings.paths.secrets}."
        ) from exc
    return f"Redis {info['redis_version']} on {settings.redis_host}:{settings.redis_port}, {info['used_memory_human']} used"


def _conf_path(settings: Settings):
    return settings.paths.conf / "redis.conf"


def _write_conf(settings: Settings):
    paths = settings.paths
    data = paths.data / NAME
    data.mkdir(parents=True, exist_ok=True)
    path = _conf_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"bind {settings.redis_host}\n"
        f"port {settings.redis_port}\n"
        f"requirepass \"{settings.redis_password.get_secret_value()}\"\n"
        "protected-mode yes\n"
        "daemonize no\n"
        f"dir {data}\n"
        "save 300 1\n"
        "appendonly no\n"
        "loglevel notice\n"
    )
    path.chmod(0o600)
    return path
