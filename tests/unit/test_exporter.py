"""The exporter keeps our metrics in the process's memory, whatever the environment says (feast's import sets
PROMETHEUS_MULTIPROC_DIR to a folder that goes with its importer)."""

from __future__ import annotations

import importlib

from prometheus_client import values

from cdcf import exporter


def test_metrics_stay_in_memory_when_a_multiprocess_folder_is_set_or_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "deleted-by-its-owner"))
    importlib.reload(values)  # as if prometheus_client were first imported now, with the variable set
    assert values.ValueClass is not values.MutexValue  # what prometheus_client alone would do
    importlib.reload(exporter)  # our metrics' modules import the exporter first
    counter = exporter.Counter("cdcf_test_in_memory", "a metric made after the variable was set", registry=None)
    counter.inc(2)  # a file-backed value would fail here: its folder does not exist
    assert counter._value.get() == 2 and values.ValueClass is values.MutexValue
