from __future__ import annotations

import os
import secrets

import pytest

from cdcf.errors import ConfigError
from cdcf.settings import SECRET_FIELDS, SYSTEM_VARIABLES, ensure_secrets, load_settings


def test_the_secrets_file_is_private_before_a_password_is_in_it(tmp_path, monkeypatch):
    """Created 0600, not made private after the fact: under a umask of 0 a file opened the usual way would be
    world-readable while the passwords are written."""
    for field in SECRET_FIELDS:
        monkeypatch.delenv(f"CDCF_{field.upper()}", raising=False)
    path, modes, token = tmp_path / "secrets.env", [], secrets.token_urlsafe

    def watched(n: int) -> str:  # each password is made while the file is open
        modes.append(path.stat().st_mode & 0o777)
        return token(n)

    monkeypatch.setattr(secrets, "token_urlsafe", watched)
    umask = os.umask(0)
    try:
        ensure_secrets(tmp_path)
    finally:
        os.umask(umask)
    assert modes == [0o600] * len(SECRET_FIELDS)


def test_first_run_writes_private_random_secrets_and_keeps_them(tmp_path, monkeypatch):
    for field in SECRET_FIELDS:
        monkeypatch.delenv(f"CDCF_{field.upper()}", raising=False)
    path = ensure_secrets(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert sorted(line.split("=")[0] for line in first.splitlines()) == sorted(
        f"CDCF_{f.upper()}" for f in SECRET_FIELDS
    )
    ensure_secrets(tmp_path)
    assert path.read_text() == first
    settings = load_settings(home=tmp_path)
    assert len(settings.redis_password.get_secret_value()) >= 24
    assert settings.redis_password.get_secret_value() not in repr(settings)  # masked when printed


def test_environment_overrides_the_secrets_file(tmp_path, monkeypatch):
    ensure_secrets(tmp_path)
    monkeypatch.setenv("CDCF_REDIS_PASSWORD", "from-env")
    monkeypatch.setenv("CDCF_REDIS_PORT", "7000")
    settings = load_settings(home=tmp_path)
    assert settings.redis_password.get_secret_value() == "from-env"
    assert settings.redis_port == 7000


def test_every_problem_is_reported_at_once_with_the_fix(tmp_path, monkeypatch):
    for field in SECRET_FIELDS:
        monkeypatch.delenv(f"CDCF_{field.upper()}", raising=False)
    monkeypatch.setenv("CDCF_PG_PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_settings(home=tmp_path)
    message = str(err.value)
    assert "CDCF_PG_PORT" in message and "CDCF_APP_PASSWORD" in message and "CDCF_REDIS_PASSWORD" in message
    assert "make up" in message


def test_unknown_settings_are_rejected(tmp_path):
    ensure_secrets(tmp_path)
    with pytest.raises(ConfigError, match="CDCF_NO_SUCH_THING"):
        load_settings(home=tmp_path, no_such_thing=1)


def test_passwords_with_special_characters_survive_dsn_and_url(tmp_path, monkeypatch):
    ensure_secrets(tmp_path)
    monkeypatch.setenv("CDCF_FEAST_PASSWORD", "p@ss w'rd/:%")
    settings = load_settings(home=tmp_path)
    assert settings.sqlalchemy_url("db").startswith("postgresql+psycopg://feast:p%40ss%20w%27rd%2F%3A%25@")
    assert "password='p@ss w\\'rd/:%'" in settings.pg_dsn("db", user="feast")


def test_a_child_environment_is_the_settings_and_the_system_basics_only(tmp_path, monkeypatch):
    """What a supervised process gets: every setting as its CDCF_* variable (the child reads the same settings), the
    system's basics, and nothing its starter happened to carry (feast's PROMETHEUS_MULTIPROC_DIR, say)."""
    ensure_secrets(tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "gone"))
    monkeypatch.setenv("SOME_LIBRARY_STATE", "1")
    monkeypatch.setenv("CDCF_REDIS_PORT", "16379")
    monkeypatch.setenv("CDCF_APP_PASSWORD", "from-the-environment")
    monkeypatch.delenv("CDCF_FEAST_PASSWORD", raising=False)
    settings = load_settings(home=tmp_path, metrics_enabled=False)
    env = settings.environment()
    assert env["CDCF_REDIS_PORT"] == "16379" and env["CDCF_HOME"] == str(tmp_path)
    assert env["CDCF_METRICS_ENABLED"] == "false" and env["PATH"] == os.environ["PATH"]
    assert env["CDCF_APP_PASSWORD"] == "from-the-environment"  # as the starter was given it
    assert "CDCF_FEAST_PASSWORD" not in env  # read from <home>/secrets.env, where the starter read it
    assert {k for k in env if not k.startswith("CDCF_")} <= set(SYSTEM_VARIABLES)
    monkeypatch.setattr(os, "environ", env)  # a child's settings, from that environment alone, are the same
    assert load_settings() == settings
