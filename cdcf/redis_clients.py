"""Redis clients of the pipeline, configured in one place: each signs in as its ACL user (the default user is off).

The writer is the pipeline (the streaming job, the backfill's seeding, the segment writer, the tools); the reader
is everything that serves features (Feast, `feast serve`, the scoring service), and Redis refuses it any write.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import redis

from cdcf.settings import Settings

CONNECT_TIMEOUT_S = 5
REPLY_TIMEOUT_S = 60  # a pipeline of many thousand writes (a backfill's seeding) answers within it

Role = Literal["writer", "reader"]

# What each user may run (Redis ACL categories): the reader reads and nothing else.
ACL_RULES: dict[Role, str] = {
    "writer": "~* resetchannels -@all +@read +@write +@keyspace +@connection +@transaction +info",
    "reader": "~* resetchannels -@all +@read +@connection +@transaction",
}


def credentials(settings: Settings, role: Role) -> tuple[str, str]:
    """(user, password) of ``role``."""
    if role == "writer":
        return settings.redis_user, settings.redis_password.get_secret_value()
    return settings.redis_reader_user, settings.redis_reader_password.get_secret_value()


def redis_client(settings: Settings, role: Role, **options: object) -> redis.Redis:
    """A client of the settings' Redis, signed in as ``role``'s user; ``options`` go to redis.Redis. Connecting gives
    up after CONNECT_TIMEOUT_S and a reply after REPLY_TIMEOUT_S unless ``options`` say otherwise (the feature client
    is stricter)."""
    user, password = credentials(settings, role)
    options = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": REPLY_TIMEOUT_S, **options}
    return redis.Redis(host=settings.redis_host, port=settings.redis_port, username=user, password=password, **options)


def acl_file(settings: Settings) -> str:
    """The server's users, as a Redis ACL file: the default user off, and the writer and reader with their rules
    and their passwords' SHA-256 (the file holds no password)."""
    lines = ["user default off resetkeys resetchannels -@all"]
    for role, rules in ACL_RULES.items():
        user, password = credentials(settings, role)
        lines.append(f"user {user} on #{hashlib.sha256(password.encode()).hexdigest()} {rules}")
    return "\n".join(lines) + "\n"
