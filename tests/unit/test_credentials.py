"""The pure parts of the stack's security: how each credential is written for the server that reads it, and the
rules each user gets. The live refusals are in tests/integration/test_security.py."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from cdcf import kafka_clients
from cdcf.errors import ServiceError
from cdcf.redis_clients import ACL_RULES, acl_file
from cdcf.settings import SECRET_FIELDS, Settings, write_private
from ops.stack import certificates, kafka, postgres

HOSTILE = 'a "quoted" \\ back\\slash, it\'s = 😀'


def _settings(**secrets: str) -> Settings:
    return Settings(**{field: secrets.get(field, f"pw-{field}") for field in SECRET_FIELDS})


def test_write_private_never_lets_others_read_even_under_umask_0(tmp_path):
    umask = os.umask(0)
    try:
        alone = write_private(tmp_path / "alone", "secret")
        shared = write_private(tmp_path / "shared", "secret", group=os.getgid())
        (tmp_path / "was-open").write_text("old")
        (tmp_path / "was-open").chmod(0o644)
        reused = write_private(tmp_path / "was-open", "secret")
    finally:
        os.umask(umask)
    assert [p.stat().st_mode & 0o777 for p in (alone, shared, reused)] == [0o600, 0o640, 0o600]
    assert reused.read_text() == "secret"


def test_the_redis_users_file_holds_hashes_and_turns_the_default_user_off():
    settings = _settings(redis_password="writer pw", redis_reader_password="reader pw")
    lines = acl_file(settings).splitlines()
    assert lines[0].startswith("user default off")
    assert "writer pw" not in acl_file(settings) and "reader pw" not in acl_file(settings)
    writer = next(line for line in lines if line.startswith(f"user {settings.redis_user} "))
    assert f"#{hashlib.sha256(b'writer pw').hexdigest()}" in writer
    assert "+@write" in ACL_RULES["writer"] and "+@write" not in ACL_RULES["reader"]
    assert "-@all" in ACL_RULES["reader"]  # what it may run is listed, nothing else


def test_connects_rest_users_file_carries_any_password(tmp_path):
    """java.util.Properties reads the escaped file back to the exact password (checked by Java itself)."""
    settings = _settings(connect_password=HOSTILE)
    (tmp_path / "users.properties").write_text(kafka.rest_users_file(settings))
    (tmp_path / "Read.java").write_text(
        "public class Read { public static void main(String[] a) throws Exception {"
        " var p = new java.util.Properties(); p.load(new java.io.FileInputStream(a[0]));"
        ' System.out.write(p.getProperty(a[1]).getBytes("UTF-8")); System.out.flush(); } }'
    )
    read = subprocess.run(
        ["java", str(tmp_path / "Read.java"), str(tmp_path / "users.properties"), settings.connect_user],
        capture_output=True,
        check=True,
    )
    assert read.stdout.decode() == HOSTILE
    assert f'file="{tmp_path}/u"' in kafka.rest_jaas(f"{tmp_path}/u")


def test_jaas_lines_quote_their_values():
    line = kafka_clients.jaas("M", "user", 'p"w\\')
    assert line == 'M required username="user" password="p\\"w\\\\";'


def test_kafka_users_are_made_from_an_argument_file_and_refuse_what_the_tool_cannot_take():
    args = kafka.format_arguments(_settings(), "/conf/kafka.properties").splitlines()
    assert args[0] == '"kafka.tools.StorageTool"' and '"/conf/kafka.properties"' in args
    assert sum(a == '"--add-scram"' for a in args) == 3
    with pytest.raises(ServiceError, match="quote or a backslash"):
        kafka.format_arguments(_settings(kafka_reader_password='has"quote'), "/p")


def test_the_reader_may_write_no_change_topic():
    settings = _settings()
    rules = kafka.acl_rules(settings)
    reader = [r for r in rules if r[0] == f"User:{settings.kafka_reader_user}"]
    writes = {(kind, pattern, name) for _, kind, pattern, name, op in reader if op in ("write", "all", "create")}
    assert writes == {("topic", "literal", settings.dead_letter_topic)}
    capture = [r for r in rules if r[0] == f"User:{settings.kafka_capture_user}"]
    assert ("topic", "prefixed", settings.topic_prefix, "all") in {r[1:] for r in capture}
    assert all(r[0] != f"User:{settings.kafka_admin_user}" for r in rules)  # a super user, in the broker's config
    props = kafka.broker_properties(settings)
    assert props["super.users"] == f"User:{settings.kafka_admin_user}"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert "PLAINTEXT://" not in props["listeners"].replace("SASL_PLAINTEXT://", "")


def test_psql_variables_escape_quotes_and_backslashes_and_refuse_line_breaks():
    assert postgres.psql_variables({"v": "it's \\x"}) == "\\set v 'it''s \\\\x'\n"
    with pytest.raises(ServiceError, match="line break"):
        postgres.psql_variables({"v": "a\rb"})


def test_postgres_takes_tls_only_over_tcp():
    rules = [line.split() for line in postgres.hba_rules(_settings()).splitlines()]
    assert all(r[0] in ("local", "hostssl") or r[-1] == "reject" for r in rules)
    assert ["hostnossl", "all", "all", "all", "reject"] in rules


def test_the_server_certificate_is_signed_for_the_names_clients_dial(tmp_path):
    certificates.issue(tmp_path, ["postgres", "127.0.0.1"])
    assert certificates.names(tmp_path / "server.crt") == ["127.0.0.1", "postgres"]
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "server.crt"], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
