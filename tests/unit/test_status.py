"""The streaming job's health reads its status file: a query that restarted lately, or none running, is trouble."""

from __future__ import annotations

from cdcf.stack.background import RESTART_WINDOW_S, STREAMING

HEALTHY = {"batches": 9, "changes": 90, "rows_written": 30, "decayed": 0, "last_as_of": None, "restarts": 0,
           "last_error": None, "last_restart_at": None, "query_active": True, "at": 10_000.0}


def test_a_running_query_is_healthy():
    assert STREAMING.trouble(HEALTHY) is None
    assert STREAMING.trouble({**HEALTHY, "restarts": 2, "last_restart_at": 10_000.0 - RESTART_WINDOW_S - 1}) is None


def test_a_recent_restart_or_no_query_is_trouble_with_the_last_error():
    restarting = {**HEALTHY, "restarts": 3, "last_restart_at": 9_990.0, "last_error": "broker down"}
    assert "restarted its query 3 time(s), the last 10 s ago (last error: broker down)" in STREAMING.trouble(restarting)
    stopped = {**HEALTHY, "query_active": False, "last_error": "boom"}
    assert STREAMING.trouble(stopped) == "has no running query (last error: boom)"
