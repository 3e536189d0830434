"""The suite's timeline (tests/timeline.py): spans of one file on one worker."""

from __future__ import annotations

from tests.timeline import spans


def test_consecutive_tests_of_a_file_on_a_worker_make_one_span():
    entries = [
        {"worker": "gw0", "test": "a.py::t1", "start": 100.0, "end": 110.0},
        {"worker": "gw1", "test": "b.py::t1", "start": 101.0, "end": 150.0},
        {"worker": "gw0", "test": "a.py::t2", "start": 110.0, "end": 120.0},
        {"worker": "gw0", "test": "c.py::t1", "start": 120.0, "end": 121.0},
        {"worker": "gw0", "test": "a.py::t3", "start": 121.0, "end": 130.0},
    ]
    assert spans(entries[::-1]) == [
        ("gw0", "a.py", 0.0, 20.0, 2),
        ("gw1", "b.py", 1.0, 50.0, 1),
        ("gw0", "c.py", 20.0, 21.0, 1),
        ("gw0", "a.py", 21.0, 30.0, 1),
    ]
    assert spans([]) == []
