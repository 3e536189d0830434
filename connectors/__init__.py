"""Capture: Debezium through the Connect REST API, the change archive, dead letters and re-snapshots."""
