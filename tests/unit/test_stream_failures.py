# ruff: noqa: E501 - a verbatim error as Spark words it
"""What the streaming job says when its query fails: a store's refusal, found inside Spark's wrapping."""

from __future__ import annotations

import redis

from cdcf.errors import StoreRefusedError
from streaming.job import failure, refusing_store

REFUSED = StoreRefusedError(
    "online", redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
)
SPARK_WRAPPED = f"""[FOREACH_BATCH_USER_FUNCTION_ERROR] An error occurred in the user provided function in foreach batch sink. Reason: An exception was thrown from the Python worker. Please see the stack trace below.
Traceback (most recent call last):
  File "/work/main/streaming/sink.py", line 80, in write
redis.exceptions.OutOfMemoryError: OOM command not allowed when used memory > 'maxmemory'.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/work/main/streaming/sink.py", line 83, in write
    raise StoreRefusedError("online", exc) from exc
cdcf.errors.StoreRefusedError: {REFUSED}
 SQLSTATE: 39000
=== Streaming Query ===
Identifier: [id = 1, runId = 2]"""


def test_a_refusal_inside_sparks_error_is_the_line_that_says_why():
    said = failure(SPARK_WRAPPED)
    assert said == str(REFUSED) and said.startswith("the online store refused a write (OOM command not allowed")
    assert refusing_store(said) == "online"
    offline = failure(str(StoreRefusedError("offline", OSError("cannot execute INSERT in a read-only transaction"))))
    assert refusing_store(offline) == "offline"


def test_any_other_failure_is_sparks_first_line():
    said = failure("[STREAM_FAILED] Query terminated with exception: Broker may not be available.\n  at ...")
    assert said == "[STREAM_FAILED] Query terminated with exception: Broker may not be available."
    assert refusing_store(said) is None and failure("") == "unknown error"
