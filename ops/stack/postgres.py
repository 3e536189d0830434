"""PostgreSQL from Debian's packages: a cluster of our own (``pg_createcluster``), set up for logical decoding.

The cluster must share a fate with the stack's Kafka data (in ``<home>/data``): a fresh home must never meet the
tables and replication slot of an older one, or Debezium snapshots stale rows into empty topics. Debian keeps the
cluster's data under /var/lib/postgresql (always readable by the postgres user, wherever the home is), so the
cluster is tied to its home by a stack id: ``<home>/data/stack-id``, copied into the cluster's conf folder. A new
cluster starts with an empty data folder, and a data folder with a new id gets a new cluster.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg2

from cdcf import pg_clients
from cdcf.errors import ServiceError
from cdcf.settings import Settings, StackPaths
from ops.stack import certificates, proc

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
CONF_NAME = "cdcf.conf"
OWNER_FILE = "cdcf-owner"


def start(settings: Settings) -> None:
    """Create the cluster if needed, write our configuration, start it, and create roles, databases, schema."""
    _claim_cluster(settings)
    if not cluster_exists(settings):
        _start_new_history(settings.paths)
        _run(
            [
                "pg_createcluster",
                str(settings.pg_version),
                settings.pg_cluster,
                "-p",
                str(settings.pg_port),
                "--",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
            ]
        )
        (_conf_dir(settings) / OWNER_FILE).write_text(f"{_stack_id(settings.paths)} {settings.home.resolve()}\n")
    changed = _install_tls(settings)
    changed = _write_conf(settings) or changed
    status = _cluster_status(settings)
    if status == "online" and changed:
        _run(["pg_ctlcluster", str(settings.pg_version), settings.pg_cluster, "restart"])
    elif status != "online":
        proc.require_free_port(settings.pg_host, settings.pg_port, "PostgreSQL", "CDCF_PG_PORT")
        _run(["pg_ctlcluster", str(settings.pg_version), settings.pg_cluster, "start"])
    _link_log(settings)
    proc.wait_until(
        lambda: _psql(settings, "SELECT 1", db="postgres"),
        timeout_s=settings.start_timeout_s,
        what="PostgreSQL",
        log_file=settings.paths.log("postgres"),
    )
    _bootstrap(settings)


def stop(settings: Settings) -> None:
    if cluster_exists(settings) and _cluster_status(settings) == "online":
        _run(["pg_ctlcluster", str(settings.pg_version), settings.pg_cluster, "stop", "-m", "fast"])
        log.info("stopped PostgreSQL cluster %s/%s", settings.pg_version, settings.pg_cluster)


def drop(settings: Settings) -> None:
    """Delete our cluster, data included (never another stack's)."""
    if cluster_exists(settings) and _owner(settings)[0] == _stack_id(settings.paths, create=False):
        _drop(settings)


def _drop(settings: Settings) -> None:
    _run(["pg_dropcluster", "--stop", str(settings.pg_version), settings.pg_cluster])
    shutil.rmtree(_conf_dir(settings), ignore_errors=True)  # our own files there, which pg_dropcluster leaves
    log.info("dropped PostgreSQL cluster %s/%s", settings.pg_version, settings.pg_cluster)


def _claim_cluster(settings: Settings) -> None:
    """Make sure a cluster registered under our name is this stack's; replace one whose stack is gone."""
    if not cluster_exists(settings):
        return
    owner_id, owner_home = _owner(settings)
    if owner_id is not None and owner_id == _stack_id(settings.paths, create=False):
        return
    if (
        owner_home is not None
        and owner_home != settings.home.resolve()
        and _stack_id(StackPaths(owner_home), create=False) == owner_id
    ):
        raise ServiceError(
            f"PostgreSQL cluster {settings.pg_version}/{settings.pg_cluster} belongs to the stack in {owner_home}; "
            f"stop that stack, or give this one its own CDCF_PG_CLUSTER and CDCF_PG_PORT."
        )
    # its stack's data is gone (or it predates stack ids): nothing can consume that slot consistently any more
    log.warning(
        "replacing PostgreSQL cluster %s/%s, left by a stack whose data is gone (%s)",
        settings.pg_version,
        settings.pg_cluster,
        owner_home or "no owner recorded",
    )
    _drop(settings)


def _start_new_history(paths: StackPaths) -> None:
    """A new database begins a new change history: the old Kafka topics, offsets and Redis values would lie."""
    if paths.data.exists() and any(paths.data.iterdir()):
        log.warning("new PostgreSQL cluster: deleting the stack data of the old one in %s", paths.data)
        shutil.rmtree(paths.data)


def _owner(settings: Settings) -> tuple[str | None, Path | None]:
    try:
        stack_id, home = (_conf_dir(settings) / OWNER_FILE).read_text().split(maxsplit=1)
    except (FileNotFoundError, ValueError):
        return None, None
    return stack_id, Path(home.strip())


def _stack_id(paths: StackPaths, create: bool = True) -> str | None:
    """The identity of a home's data; a new one whenever the data folder is new."""
    path = paths.data / "stack-id"
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(uuid.uuid4().hex)
    return path.read_text()


def pid(settings: Settings) -> int | None:
    pid_file = _data_dir(settings) / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError, PermissionError):
        return None


def health(settings: Settings) -> str:
    """One line on the cluster, connecting as the app role over TCP (so a wrong password shows here)."""
    with pg_clients.session(settings, timeout_s=3) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('wal_level'), current_setting('server_version')")
        wal_level, version = cur.fetchone()
        cur.execute("SELECT slot_name, wal_status FROM pg_replication_slots ORDER BY slot_name")
        slots = cur.fetchall()
    if wal_level != "logical":
        raise ServiceError(f"PostgreSQL runs with wal_level={wal_level}; run `make up` to restart it configured.")
    if problem := slot_trouble(slots):
        raise ServiceError(problem)
    return f"PostgreSQL {version} on {settings.pg_host}:{settings.pg_port}, wal_level=logical, {len(slots)} slot(s)"


def slot_trouble(slots: list[tuple[str, str | None]]) -> str | None:
    """Why replication slots (name, wal_status) put capture at risk, or None. Only ``reserved`` is safe: ``extended``
    keeps WAL past max_wal_size, ``unreserved`` is about to lose it, ``lost`` has (capture must snapshot again)."""
    risky = [f"{name} ({status})" for name, status in slots if status != "reserved"]
    if not risky:
        return None
    return (
        f"replication slot(s) {', '.join(risky)} no longer reserve their WAL: capture is behind by more than "
        f"max_wal_size, or has lost changes (lost: run `cdcf resnapshot`, which snapshots every row again and "
        f"deletes what the source no longer has)."
    )


def connect_error(settings: Settings, exc: psycopg2.OperationalError) -> ServiceError:
    """Turn a failed connection into the message a user can act on."""
    text = str(exc).strip().splitlines()[0]
    if "password authentication failed" in text:
        return ServiceError(
            f"PostgreSQL at {settings.pg_host}:{settings.pg_port} rejected the password of role "
            f"'{settings.app_user}'; unset CDCF_APP_PASSWORD or set it to the value in {settings.paths.secrets}."
        )
    return ServiceError(f"Cannot reach PostgreSQL at {settings.pg_host}:{settings.pg_port} ({text}); run `make up`.")


def _bootstrap(settings: Settings) -> None:
    vars_ = {
        "app_user": settings.app_user,
        "app_password": settings.app_password.get_secret_value(),
        "feast_user": settings.feast_user,
        "feast_password": settings.feast_password.get_secret_value(),
        "debezium_user": settings.debezium_user,
        "debezium_password": settings.debezium_password.get_secret_value(),
        "app_db": settings.app_db,
        "registry_db": settings.registry_db,
        "offline_db": settings.offline_db,
        "publication": settings.publication,
    }
    _psql_file(settings, HERE / "roles.sql", "postgres", vars_)
    _psql_file(settings, HERE / "app_schema.sql", settings.app_db, vars_, role=settings.app_user)


def ensure_database(settings: Settings, name: str) -> None:
    """A scratch database owned by the feast role (the batch benchmarks' offline store), created once."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a plain database name: {name!r}")
    if not _psql(settings, f"SELECT 1 FROM pg_database WHERE datname = '{name}'", db="postgres").strip():
        _psql(settings, f'CREATE DATABASE {name} OWNER "{settings.feast_user}"', db="postgres")


def admin_sql(settings: Settings, sql: str, db: str = "postgres") -> str:
    """One statement as the cluster's superuser, over its socket (operators' tools: the fault matrix)."""
    return _psql(settings, sql, db)


def restart(settings: Settings) -> None:
    """Restart the cluster (fast shutdown: open sessions are cut, as a crash or a failover would)."""
    _run(["pg_ctlcluster", str(settings.pg_version), settings.pg_cluster, "restart", "-m", "fast"])


def _psql(settings: Settings, sql: str, db: str) -> str:
    return _run(_psql_argv(settings, db) + ["-tAc", sql])


def _psql_file(settings: Settings, path: Path, db: str, variables: dict[str, str], role: str | None = None) -> None:
    # variables go through stdin (\set), never argv, so that passwords stay out of `ps`
    header = psql_variables(variables)
    if role:  # run as the owning role, through the superuser's socket connection
        header += f'SET ROLE "{role.replace(chr(34), chr(34) * 2)}";\n'
    admin_script(settings, header + path.read_text(), db)


def admin_script(settings: Settings, script: str, db: str = "postgres") -> str:
    """A psql script (its variables from ``psql_variables``) as the cluster's superuser, over its socket, through
    stdin; its rows' output, unaligned."""
    return _run(_psql_argv(settings, db) + ["-tA", "-f", "-"], stdin=script)


def psql_variables(variables: dict[str, str]) -> str:
    """psql ``\\set`` lines giving each variable its value exactly: inside psql's single quotes a backslash and a
    quote are escaped (deploy/postgres-init.sh does the same); a line break cannot be carried."""
    lines = []
    for key, value in variables.items():
        if "\n" in value or "\r" in value:
            raise ServiceError(f"{key} holds a line break, which psql variables cannot carry; choose another value.")
        lines.append(f"\\set {key} '{value.replace(chr(92), chr(92) * 2).replace(chr(39), chr(39) * 2)}'\n")
    return "".join(lines)


def _psql_argv(settings: Settings, db: str) -> list[str]:
    return [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-p",
        str(settings.pg_port),
        "-d",
        db,
    ]


def server_settings(settings: Settings) -> dict[str, str]:
    """The server parameters logical decoding needs; docker-compose.yml passes the same ones."""
    return {
        "wal_level": "logical",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "max_slot_wal_keep_size": "4GB",
        "wal_sender_timeout": "60s",
    }


def tls_settings(cert: str, key: str) -> dict[str, str]:
    """TLS on, with the stack's certificate (compose passes the same)."""
    return {"ssl": "on", "ssl_cert_file": cert, "ssl_key_file": key, "ssl_min_protocol_version": "TLSv1.2"}


def hba_rules(settings: Settings) -> str:
    """Who may connect how (pg_hba.conf), the same locally and in compose: the superuser through the socket only;
    over TCP, TLS and a SCRAM password, for every address (a client on loopback too), and nothing without TLS."""
    return (
        f"local   all          postgres                 peer\n"
        f"local   all          all                      scram-sha-256\n"
        f"hostssl all          all         all          scram-sha-256\n"
        f"hostssl replication  {settings.debezium_user:<11} all          scram-sha-256\n"
        f"hostnossl all        all         all          reject\n"
        f"hostnossl replication all        all          reject\n"
    )


def _install_tls(settings: Settings) -> bool:
    """Generate the stack's CA and the server's certificate once (<home>/conf/tls: clients trust ca.crt), and
    put the server's pair where the cluster reads it, owned by postgres; return whether anything changed."""
    tls = settings.paths.tls
    tls.mkdir(parents=True, exist_ok=True)
    names = sorted({settings.pg_host, "127.0.0.1", "localhost", "postgres"})
    if not (tls / "server.crt").exists() or certificates.names(tls / "server.crt") != names:
        certificates.issue(tls, names)
    changed = False
    for name in ("server.crt", "server.key"):
        target = _conf_dir(settings) / name
        if not target.exists() or target.read_bytes() != (tls / name).read_bytes():
            shutil.copyfile(tls / name, target)
            changed = True
        target.chmod(0o600)
        shutil.chown(target, "postgres", "postgres")
    return changed


def _write_conf(settings: Settings) -> bool:
    """Write conf.d/cdcf.conf and pg_hba.conf; return whether they changed (a restart is then needed)."""
    conf_dir = _conf_dir(settings)
    params = {
        "listen_addresses": settings.pg_host,
        "port": str(settings.pg_port),
        **server_settings(settings),
        **tls_settings(str(conf_dir / "server.crt"), str(conf_dir / "server.key")),
    }
    files = {
        conf_dir / "conf.d" / CONF_NAME: "".join(f"{key} = '{value}'\n" for key, value in params.items()),
        conf_dir / "pg_hba.conf": hba_rules(settings),
    }
    changed = False
    for path, text in files.items():
        if not (path.exists() and path.read_text() == text):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed = True
    return changed


def _link_log(settings: Settings) -> None:
    target = Path(f"/var/log/postgresql/postgresql-{settings.pg_version}-{settings.pg_cluster}.log")
    link = settings.paths.log("postgres")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def _data_dir(settings: Settings) -> Path:
    return Path(f"/var/lib/postgresql/{settings.pg_version}/{settings.pg_cluster}")


def _conf_dir(settings: Settings) -> Path:
    return Path(f"/etc/postgresql/{settings.pg_version}/{settings.pg_cluster}")


def cluster_exists(settings: Settings) -> bool:
    return (_conf_dir(settings) / "postgresql.conf").exists()


def _cluster_status(settings: Settings) -> str:
    out = _run(["pg_lsclusters", "-h", str(settings.pg_version), settings.pg_cluster])
    fields = out.split()
    return fields[3] if len(fields) > 3 else "unknown"


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip().splitlines()
        raise ServiceError(f"`{' '.join(argv[:6])}` failed: {msg[-1] if msg else done.returncode}")
    return done.stdout.strip()
