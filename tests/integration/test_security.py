"""Every intrusion of bench/security.py is refused on the local stack (each after its control with the right
credentials succeeded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from bench import security
from cdcf.errors import ServiceError
from cdcf.settings import PROJECT_ROOT
from ops.stack import postgres


@pytest.mark.parametrize("name", list(security.ATTEMPTS))
def test_the_intrusion_is_refused(settings, name):
    how = security.ATTEMPTS[name](settings)
    assert how  # refused, and says how
    print(f"{name}: refused ({how})")


TRICKY = 'it\'s a "pass word" \\ with\\backslash, commas; = signs and ünïcode'


def test_the_local_bootstrap_gives_psql_any_password_exactly(settings):
    assert postgres.admin_script(settings, postgres.psql_variables({"v": TRICKY}) + "SELECT :'v';") == TRICKY
    with pytest.raises(ServiceError, match="line break"):
        postgres.psql_variables({"v": "two\nlines"})


def test_the_compose_init_script_creates_roles_that_log_in_with_any_password(settings):
    """deploy/postgres-init.sh, run as the postgres image runs it (the postgres user, its socket), on roles and
    databases of its own, with secret files holding quotes, spaces and backslashes; each role then logs in over
    TLS with its password."""
    n = time.time_ns() % 10**9
    names = {
        "CDCF_APP_USER": f"t_app_{n}",
        "CDCF_FEAST_USER": f"t_feast_{n}",
        "CDCF_DEBEZIUM_USER": f"t_dbz_{n}",
        "CDCF_APP_DB": f"t_app_{n}",
        "CDCF_REGISTRY_DB": f"t_registry_{n}",
        "CDCF_OFFLINE_DB": f"t_offline_{n}",
        "CDCF_PUBLICATION": f"t_pub_{n}",
    }
    passwords = {role: f"{TRICKY} {role}" for role in ("app", "feast", "debezium")}
    # the secrets and SQL files where the postgres user reads them, as the image mounts them (the checkout may be
    # in a folder only root enters: the script itself goes through stdin)
    secrets = Path(tempfile.mkdtemp(prefix="cdcf-init-secrets-"))
    secrets.chmod(0o755)
    for sql in ("roles.sql", "app_schema.sql"):
        shutil.copy(PROJECT_ROOT / "ops" / "stack" / sql, secrets / sql)
    env = {
        **os.environ,
        **names,
        "POSTGRES_USER": "postgres",
        "PGPORT": str(settings.pg_port),
        "CDCF_SECRETS_DIR": str(secrets),
        "CDCF_SQL_DIR": str(secrets),
    }
    source = (PROJECT_ROOT / "deploy" / "postgres-init.sh").read_text()

    def script() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", "bash", "-s"],
            input=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        (secrets / "cdcf_app_password").write_text("")
        empty = script()
        assert empty.returncode != 0 and "cdcf_app_password is empty" in empty.stderr
        for role, password in passwords.items():
            (secrets / f"cdcf_{role}_password").write_text(password)
        done = script()
        assert done.returncode == 0, done.stderr
        for role, db in (("app", names["CDCF_APP_DB"]), ("feast", names["CDCF_OFFLINE_DB"])):
            dsn = make_dsn(
                host=settings.pg_host,
                port=settings.pg_port,
                dbname=db,
                user=names[f"CDCF_{role.upper()}_USER"],
                password=passwords[role],
                **settings.pg_tls,
            )
            with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
                cur.execute("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                assert cur.fetchone() == (names[f"CDCF_{role.upper()}_USER"], True)
                if role == "app":  # the schema was made as the app role
                    cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'transactions'")
                    assert cur.fetchone() == (names["CDCF_APP_USER"],)
            conn.close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(
                make_dsn(
                    host=settings.pg_host,
                    port=settings.pg_port,
                    dbname=names["CDCF_APP_DB"],
                    user=names["CDCF_APP_USER"],
                    password=TRICKY,
                    **settings.pg_tls,
                )
            ).close()
    finally:
        shutil.rmtree(secrets)
        for db in ("CDCF_APP_DB", "CDCF_REGISTRY_DB", "CDCF_OFFLINE_DB"):
            postgres.admin_sql(settings, f'DROP DATABASE IF EXISTS "{names[db]}" WITH (FORCE)')
        for role in ("CDCF_APP_USER", "CDCF_FEAST_USER", "CDCF_DEBEZIUM_USER"):
            postgres.admin_sql(settings, f'DROP ROLE IF EXISTS "{names[role]}"')
