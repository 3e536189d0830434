"""Bad situations end in one line that says what to do, never a hang (issue: local stack)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.apart
def test_port_in_use_names_the_port_and_the_setting(settings, side_home):
    with socket.socket() as squatter:
        squatter.bind((settings.redis_host, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {"CDCF_HOME": str(side_home), "CDCF_PG_CLUSTER": "cdcf_squatted", "CDCF_PG_PORT": str(port)}
        try:
            result = run_cli("up", env=env, timeout=120)
        finally:
            run_cli("down", "--purge", env=env, timeout=120)
    line = _one_error_line(result)
    assert f"Port {port}" in line and "CDCF_PG_PORT" in line


@pytest.mark.apart
def test_missing_java_javac_and_maven_are_named_with_their_fix(settings, tmp_path):
    empty_home = tmp_path / "fresh"
    bin_dir = Path(sys.executable).parent
    result = run_cli("up", env={"CDCF_HOME": str(empty_home), "PATH": f"{bin_dir}"}, timeout=60)
    line = _one_error_line(result)
    assert "java (apt-get install openjdk-17-jdk-headless" in line
    assert "javac (apt-get install openjdk-17-jdk-headless" in line
    assert "mvn (apt-get install maven" in line
    assert "make install" in line


@pytest.mark.apart
def test_unreachable_maven_repository_with_an_empty_cache(settings, tmp_path):
    home = tmp_path / "fresh"
    result = run_cli(
        "up", env={"CDCF_HOME": str(home), "CDCF_MAVEN_REPO_URL": "http://127.0.0.1:9/maven2"}, timeout=300
    )
    line = _one_error_line(result)
    assert "Could not resolve the kafka jars from http://127.0.0.1:9/maven2" in line
    assert "CDCF_MAVEN_REPO_URL" in line
    assert not (home / "cache" / "jars" / "kafka").exists()


def test_wrong_passwords_are_reported_per_component(settings):
    result = run_cli("status", env={"CDCF_REDIS_PASSWORD": "wrong", "CDCF_APP_PASSWORD": "wrong"}, timeout=120)
    assert result.returncode == 1
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "FAIL" in lines["postgres"] and "rejected the password of role 'app'" in lines["postgres"]
    assert "FAIL" in lines["redis"] and "rejected the password" in lines["redis"]
    assert "CDCF_REDIS_PASSWORD" in lines["redis"]
    assert " OK " in lines["kafka"]


def test_missing_secrets_explain_how_to_get_them(tmp_path):
    result = run_cli("status", env={"CDCF_HOME": str(tmp_path / "nothing")}, timeout=60)
    line = _one_error_line(result)
    assert "CDCF_APP_PASSWORD" in line and "make up" in line
