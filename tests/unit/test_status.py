"""A job's health: a query that restarted lately, or none running, is trouble (from its status file); so is a job
its supervisor restarted lately (from the supervisor's record)."""

from __future__ import annotations

import json
import time

from ops.stack.background import RESTART_WINDOW_S, STREAMING
from ops.stack.supervisor import Restarts

HEALTHY = {
    "batches": 9,
    "changes": 90,
    "rows_written": 30,
    "decayed": 0,
    "last_as_of": None,
    "restarts": 0,
    "last_error": None,
    "last_restart_at": None,
    "query_active": True,
    "at": 10_000.0,
}


def test_a_running_query_is_healthy():
    assert STREAMING.trouble(HEALTHY) is None
    assert STREAMING.trouble({**HEALTHY, "restarts": 2, "last_restart_at": 10_000.0 - RESTART_WINDOW_S - 1}) is None


def test_a_recent_restart_or_no_query_is_trouble_with_the_last_error():
    restarting = {**HEALTHY, "restarts": 3, "last_restart_at": 9_990.0, "last_error": "broker down"}
    assert "restarted its query 3 time(s), the last 10 s ago (last error: broker down)" in STREAMING.trouble(restarting)
    stopped = {**HEALTHY, "query_active": False, "last_error": "boom"}
    assert STREAMING.trouble(stopped) == "has no running query (last error: boom)"


def test_a_job_its_supervisor_restarted_lately_says_how_it_ended():
    killed = Restarts(restarts=2, exit_code=-9, at=time.time() - 5, last_error="")
    assert str(killed).startswith("was killed by signal 9 and was restarted 2 time(s), the last 5 s ago")
    failed = Restarts(restarts=1, exit_code=1, at=time.time(), last_error="RecursionError: too deep")
    assert str(failed).endswith("(last error: RecursionError: too deep)")
    assert str(failed).startswith("exited with code 1 and was restarted 1 time(s)")


def test_a_service_restarted_twice_within_the_window_is_in_a_restart_loop(tmp_path):
    from cdcf.settings import StackPaths
    from ops.stack import supervisor

    paths = StackPaths(tmp_path)
    paths.run.mkdir(parents=True)
    record = paths.run / "kafka.restarts.json"
    assert supervisor.trouble(paths, "kafka") is None
    record.write_text(json.dumps(Restarts(1, -9, time.time() - 5, "", recent=1).__dict__))
    assert supervisor.trouble(paths, "kafka") is None  # one restart it recovered from is no loop
    record.write_text(json.dumps(Restarts(3, 1, time.time() - 5, "Address already in use", recent=2).__dict__))
    assert supervisor.trouble(paths, "kafka").startswith(
        "is in a restart loop: it exited with code 1 and was restarted 3 time(s)"
    )
    record.write_text(json.dumps(Restarts(3, 1, time.time() - RESTART_WINDOW_S - 1, "", recent=2).__dict__))
    assert supervisor.trouble(paths, "kafka") is None  # long ago


def test_a_replication_slot_that_no_longer_reserves_its_wal_fails_status():
    from ops.stack.postgres import slot_trouble

    assert slot_trouble([("cdcf_app", "reserved")]) is None and slot_trouble([]) is None
    problem = slot_trouble([("cdcf_app", "lost"), ("other", "reserved"), ("spare", "extended")])
    assert problem.startswith("replication slot(s) cdcf_app (lost), spare (extended) no longer reserve their WAL")


def test_an_archiver_dead_lettering_lately_or_falling_behind_is_trouble():
    from ops.stack.background import ARCHIVER, LAG_GROWING_S

    fine = {
        "changes": 5,
        "duplicates": 0,
        "dead_letters": 2,
        "lag": 40,
        "at": 10_000.0,
        "last_dead_letter_at": 10_000.0 - RESTART_WINDOW_S - 1,
        "last_dead_letter_reason": "not JSON",
        "lag_growing_since": 10_000.0 - LAG_GROWING_S + 1,
    }
    assert ARCHIVER.trouble(fine) is None
    assert ARCHIVER.trouble({**fine, "last_dead_letter_at": 9_995.0}) == (
        "dead-lettered 2 change(s) so far, the last 5 s ago (reason: not JSON); they wait on the dead-letter topic"
    )
    assert ARCHIVER.trouble({**fine, "lag_growing_since": 9_900.0}) == (
        "falls behind: its lag has grown for 100 s, to 40 changes"
    )


def test_a_stalled_or_falling_behind_query_or_a_stopped_clock_is_trouble():
    from ops.stack.background import CLOCK_STOPPED_S, FIRST_BATCH_S, LAG_GROWING_S, STALLED_S

    working = {
        **HEALTHY,
        "last_batch_at": 9_999.0,
        "behind": 300,
        "behind_growing_since": 10_000.0 - LAG_GROWING_S + 1,
        "clock": "2026-12-01T10:00:00.000Z",
        "clock_moved_at": 10_000.0 - CLOCK_STOPPED_S + 1,
    }
    assert STREAMING.trouble(working) is None
    assert STREAMING.trouble({**working, "clock_moved_at": 9_900.0}) == (
        "has a clock that has not moved for 100 s (at 2026-12-01T10:00:00.000Z): changes wait until Connect commits "
        "source offsets past them; is the connector running?"
    )
    assert STREAMING.trouble({**working, "last_batch_at": 10_000.0 - STALLED_S - 5}) == (
        "has finished no micro-batch for 65 s (heartbeats alone make one every few seconds)"
    )
    assert STREAMING.trouble({**working, "behind_growing_since": 9_880.0}) == (
        "falls behind: its lag has grown for 120 s, to 300 offsets on its most lagging partition"
    )
    # a query still in its first micro-batch has no clock to watch yet, and is stuck only after FIRST_BATCH_S
    starting = {**HEALTHY, "last_batch_at": None, "clock": None, "clock_moved_at": None, "query_started_at": 9_880.0}
    assert STREAMING.trouble(starting) is None
    assert STREAMING.trouble({**starting, "query_started_at": 10_000.0 - FIRST_BATCH_S - 20}) == (
        f"has finished no micro-batch in the {FIRST_BATCH_S + 20} s since its query started"
    )


def test_a_lag_grows_only_while_it_is_never_caught_up_nor_catching_up():
    from cdcf.status import growing_since

    assert growing_since(0, 100, None, 5.0) == 5.0
    assert growing_since(100, 150, 5.0, 9.0) == 5.0  # still growing: since the first rise
    assert growing_since(150, 150, 5.0, 9.0) == 5.0  # flat, not caught up
    assert growing_since(150, 120, 5.0, 9.0) is None  # catching up
    assert growing_since(120, 0, None, 9.0) is None
