"""The changelog archiver (connectors.archive) as a background process of the local stack."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cdcf.errors import ServiceError
from cdcf.settings import Settings
from cdcf.stack import proc

NAME = "archiver"
MARKER = "cdcf archive"


def status_file(settings: Settings) -> Path:
    return settings.paths.run / "archiver.json"


def start(settings: Settings) -> None:
    if pid(settings):
        return
    status_file(settings).unlink(missing_ok=True)
    cdcf = str(Path(sys.executable).with_name("cdcf"))
    started = proc.spawn(settings.paths, NAME, [cdcf, "archive", "--status-file", str(status_file(settings))],
                         env={"CDCF_HOME": str(settings.home)})
    proc.wait_until(lambda: status_file(settings).exists(), timeout_s=settings.start_timeout_s,
                    what="The changelog archiver", log_file=settings.paths.log(NAME), pid=started)


def stop(settings: Settings) -> None:
    running = pid(settings)
    if running:
        proc.stop_pid(running, NAME)


def pid(settings: Settings) -> int | None:
    return proc.our_pid(settings.paths, NAME, MARKER)


def health(settings: Settings) -> str:
    if pid(settings) is None:
        raise ServiceError("The changelog archiver is not running; run `make up`.")
    state = json.loads(status_file(settings).read_text())
    age = time.time() - state["at"]
    if age > 30:
        raise ServiceError(f"The changelog archiver has not reported for {age:.0f} s; see {settings.paths.log(NAME)}.")
    return (f"archived {state['changes']} changes ({state['duplicates']} re-deliveries skipped), "
            f"{state['dead_letters']} dead letters, lag {state['lag']}")
