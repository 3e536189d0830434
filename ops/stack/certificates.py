"""The stack's own TLS certificates (openssl): a CA that clients trust, and a server certificate it signs for the
names clients dial. Keys are created private (umask 077) and never leave <home>/conf/tls but for the server's copy."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path

from cdcf.errors import ServiceError

DAYS = 3650


def issue(folder: Path, names: list[str]) -> None:
    """Write ca.crt/ca.key (once) and server.crt/server.key for ``names`` (host names and IP addresses)."""
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    if not ca_crt.exists():
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            str(DAYS),
            "-subj",
            "/CN=cdcf stack CA",
            "-keyout",
            ca_key,
            "-out",
            ca_crt,
        )
    csr = folder / "server.csr"
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        f"/CN={names[0]}",
        "-keyout",
        folder / "server.key",
        "-out",
        csr,
    )
    alt = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    extensions = folder / "server.ext"
    extensions.write_text(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_crt,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-days",
        str(DAYS),
        "-extfile",
        extensions,
        "-out",
        folder / "server.crt",
    )
    csr.unlink()
    extensions.unlink()
    for public in (ca_crt, folder / "server.crt"):
        public.chmod(0o644)


def names(cert: Path) -> list[str]:
    """The names a certificate is valid for (its subjectAltName), sorted."""
    text = _openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName")
    return sorted(re.findall(r"(?:DNS:|IP Address:)([^,\s]+)", text))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _openssl(*args: object) -> str:
    done = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, preexec_fn=lambda: os.umask(0o077)
    )
    if done.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {done.stderr.strip()[-300:]}")
    return done.stdout
