"""The change history's table in PostgreSQL: every archived change, as capture writes it and the batch jobs and
training sets read it (docs/semantics.md#source)."""

TABLE = "cdc_changelog"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    source_table TEXT NOT NULL,
    row_key BIGINT NOT NULL,
    lsn BIGINT NOT NULL,
    op CHAR(1) NOT NULL,
    tx_id BIGINT,
    commit_ts TIMESTAMPTZ NOT NULL,
    before JSONB,
    after JSONB,
    kafka_topic TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    archived_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, row_key, lsn, op)
);
CREATE INDEX IF NOT EXISTS {TABLE}_commit_ts ON {TABLE} (commit_ts);
"""
COLUMNS = (
    "source_table",
    "row_key",
    "lsn",
    "op",
    "tx_id",
    "commit_ts",
    "before",
    "after",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)
