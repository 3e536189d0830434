"""Status files of our long-running jobs: what `make status` reads."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def report(status_file: Path | None, state: dict[str, Any]) -> None:
    """Write a job's status file atomically (readers never see half of it), stamped with the time."""
    if status_file is None:
        return
    partial = status_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")  # writers never share it
    partial.write_text(json.dumps({**state, "at": time.time()}, default=str))
    partial.replace(status_file)


def growing_since(previous: int, lag: int, since: float | None, now: float) -> float | None:
    """Since when a consumer's lag has grown without shrinking once (None: caught up, or catching up)."""
    if lag == 0 or lag < previous:
        return None
    if lag > previous and since is None:
        return now
    return since
