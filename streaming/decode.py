"""The stateless stage, in the JVM: Kafka records -> validated, typed changes (cdcf/engine/src/.../Decoder.java).

The rules are cdcf/decoder.py's: the JVM decoder takes its constants, patterns, reason templates and the
row contracts from there (``spec``) and checks them in the same order, so each message gets the same verdict, a
change or a dead letter with the same reason (tests/cdc_cases.py and a fuzz corpus hold both to it). Why a JVM
class and not Spark SQL expressions: streaming/DESIGN.md (the expressions cost more per message and 0.2-0.5 s of
query planning per micro-batch).
"""

from __future__ import annotations

import json
from functools import cache

from pyspark.sql import DataFrame

from cdcf import decoder as rules
from cdcf.contracts import row_contracts

TEXT_KINDS = ("string",)  # kinds the engine takes as text; every other kind is a long


@cache
def spec(topic_prefix: str, keep: tuple[str, ...]) -> str:
    """The JVM decoder's rules, from decoder.py and the contracts, and the columns to keep of both images."""
    contracts = row_contracts()
    kinds = {c.name: c.kind for contract in contracts.values() for c in contract.columns}
    return json.dumps(
        {
            "prefix": topic_prefix,
            "contracts": {
                table: {
                    "key": c.key,
                    "columns": [
                        {
                            "name": col.name,
                            "kind": col.kind,
                            "nullable": col.nullable,
                            "precision": col.precision,
                            "scale": col.scale,
                        }
                        for col in c.columns
                    ],
                }
                for table, c in contracts.items()
            },
            "reasons": {name: text for name, text in vars(rules.Reason).items() if name.isupper()},
            "expected": rules.EXPECTED,
            "limits": {
                "max_text": rules.MAX_TEXT,
                "max_message": rules.MAX_MESSAGE,
                "date_days": list(rules.DATE_DAYS),
                "commit_us": list(rules.COMMIT_US),
            },
            "patterns": {
                "table": rules.TABLE_NAME,
                "timestamp": rules.TIMESTAMP,
                "zone": rules.ZONE,
                "decimal": rules.DECIMAL,
                "lone_surrogate": rules.LONE_SURROGATE.pattern,
            },
            "keep": {name: "string" if kinds[name] in TEXT_KINDS else "long" for name in keep},
        }
    )


def routed(records: DataFrame, topic_prefix: str, route_spec: str) -> DataFrame:
    """Kafka source rows -> the window engine's input (Router.java): per valid change, one row per entity it
    concerns (entity, id, table, row_key, lsn, commit_us, owns, event_us, <value columns>), and one row with an
    empty entity for a change no feature reads (a heartbeat: the clock). Dead letters give nothing here."""
    spark = records.sparkSession
    return DataFrame(spark._jvm.cdcf.engine.Decode.routed(records._jdf, spec(topic_prefix, ()), route_spec), spark)


def decode(records: DataFrame, topic_prefix: str, keep: tuple[str, ...]) -> DataFrame:
    """Kafka source rows -> one row per message but tombstones: topic, partition, offset, table, reason (null
    when valid), op, key, lsn, commit_us, and ``b_<c>`` / ``a_<c>`` for each column ``c`` in ``keep`` of the
    before and after images (integers, days, unscaled decimals and epoch microseconds as longs; text as text)."""
    spark = records.sparkSession
    return DataFrame(spark._jvm.cdcf.engine.Decode.decode(records._jdf, spec(topic_prefix, keep)), spark)
