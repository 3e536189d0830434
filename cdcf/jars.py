"""The JVM jars of the stack, resolved once from Maven Central into the ignored cache.

``jars.xml`` beside this file names them; each profile fills one folder. A folder whose ``.complete`` marker
names this ``jars.xml`` (its digest) is never resolved again, so a second ``make up`` needs neither Maven nor the
network; a changed ``jars.xml`` resolves every folder again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

from cdcf.errors import JarResolutionError, PrerequisiteError
from cdcf.settings import Settings

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("jars.xml")
PROFILES = ("kafka", "plugin", "spark")
MARKER = ".complete"


def ensure_jars(settings: Settings) -> None:
    """Fill every jar folder that is not complete yet."""
    for profile in PROFILES:
        target = settings.paths.jar_dir(profile)
        if not _complete(target):
            _resolve(settings, profile, target)


def jar_files(settings: Settings, profile: str) -> list[Path]:
    """The jars of one complete folder, sorted; raise if it was never resolved."""
    folder = settings.paths.jar_dir(profile)
    if not _complete(folder):
        raise JarResolutionError(f"The {profile} jars are not in {folder}; run `make up` (or `cdcf up`) first.")
    return sorted(folder.glob("*.jar"))


def _resolve(settings: Settings, profile: str, target: Path) -> None:
    mvn = shutil.which(settings.maven)
    if mvn is None:
        raise PrerequisiteError(
            f"Maven ('{settings.maven}') is not on PATH and the jar cache {target} is empty; install it with "
            "`apt-get install maven` (or run `make install`), or set CDCF_MAVEN to its path."
        )
    staging = target.with_name(f"{profile}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        f"-P{profile}",
        f"-Dout={staging}",
        f"-Dmaven.repo.local={settings.paths.m2}",
        "package",
    ]
    if settings.maven_repo_url:
        argv[1:1] = ["-s", str(_mirror_settings(settings))]
    log.info("resolving %s jars from Maven into %s", profile, target)
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=settings.paths.cache.parent, check=False)
    if proc.returncode != 0:
        reason = _first_error(proc.stdout + proc.stderr)
        source = settings.maven_repo_url or "Maven Central"
        raise JarResolutionError(
            f"Could not resolve the {profile} jars from {source} into the empty cache {target}: {reason}. "
            "Check that this machine reaches the repository (or set CDCF_MAVEN_REPO_URL to a mirror), "
            "then run `make up` again."
        )
    (staging / MARKER).write_text(_digest())
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _digest() -> str:
    return f"resolved from jars.xml {hashlib.sha256(POM.read_bytes()).hexdigest()[:16]}\n"


def _complete(folder: Path) -> bool:
    marker = folder / MARKER
    return marker.exists() and marker.read_text() == _digest()


def resolved(settings: Settings) -> bool:
    """Every folder is filled from this ``jars.xml``: ``make up`` needs no Maven."""
    return all(_complete(settings.paths.jar_dir(p)) for p in PROFILES)


def _mirror_settings(settings: Settings) -> Path:
    path = settings.paths.cache / "maven-settings.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<settings><mirrors><mirror><id>cdcf-mirror</id><mirrorOf>*</mirrorOf>"
        f"<url>{settings.maven_repo_url}</url></mirror></mirrors></settings>\n"
    )
    return path


def _first_error(output: str) -> str:
    errors = [line.removeprefix("[ERROR]").strip() for line in output.splitlines() if "[ERROR]" in line]
    return (errors[0] if errors else output.strip().splitlines()[-1] if output.strip() else "no output")[:300]
