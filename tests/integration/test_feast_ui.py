"""Feast's own UI (`feast ui`) on this project's registry, loaded in headless Chromium as a user's browser would:
its feature-view page lists every view of the declaration."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cdcf import features as decl
from cdcf.feast_config import REPO_PATH
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def test_feast_ui_lists_every_feature_view_in_a_browser(settings, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Chromium comes with Debian's chromium package: `make install`"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = settings.paths.conf / "feature_store.yaml"  # the reader's, as `make up` wrote it
    ui = subprocess.Popen(
        [str(Path(sys.executable).with_name("feast")), "-f", str(config), "ui", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_PATH,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), 180, "feast ui to answer")
        page = f"http://127.0.0.1:{port}/p/{settings.feast_project}/feature-view"
        browser = subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                page,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert browser.returncode == 0, browser.stderr[-2000:]
        dom = browser.stdout  # the page as rendered, after its scripts fetched the registry
        missing = [view.name for view in decl.ALL_VIEWS if view.name not in dom]
        assert not missing, f"the UI's feature-view page does not list {missing} ({len(dom)} characters)"
    finally:
        ui.terminate()
        ui.wait(timeout=30)
