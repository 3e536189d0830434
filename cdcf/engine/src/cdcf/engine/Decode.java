package cdcf.engine;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/** The stateless stage PySpark calls through py4j: Kafka records -> one decoded row per message (tombstones
 * left out), on the executors. */
public final class Decode {
    private Decode() {
    }

    /**
     * ``records`` (Spark's Kafka source: topic, partition, offset, value) -> topic, partition, offset, table,
     * reason (null: a valid change), op, key, lsn, commit_us, then ``b_<c>`` and ``a_<c>`` for each column the spec
     * keeps, typed as the engine takes them (integers, days, unscaled decimals, epoch microseconds: long; text).
     */
    public static Dataset<Row> decode(Dataset<Row> records, String specJson) {
        Decoder decoder = new Decoder(specJson);
        JsonNode keep = Spec.tree(specJson).get("keep");
        List<String> names = new ArrayList<>();
        List<Boolean> text = new ArrayList<>();
        keep.fields().forEachRemaining(e -> {
            names.add(e.getKey());
            text.add(e.getValue().asText().equals("string"));
        });
        StructType schema = schema(names, text);
        Dataset<Row> input = records.select("topic", "partition", "offset", "value");
        return input.mapPartitions((MapPartitionsFunction<Row, Row>) rows -> new java.util.Iterator<Row>() {
            private Row next = advance();

            private Row advance() {
                while (rows.hasNext()) {
                    Row in = rows.next();
                    Decoder.Result r = decoder.decode(in.getString(0), (byte[]) in.get(3));
                    if (r != null) return row(in, r, names);
                }
                return null;
            }

            public boolean hasNext() {
                return next != null;
            }

            public Row next() {
                Row out = next;
                next = advance();
                return out;
            }
        }, Encoders.row(schema));
    }

    /**
     * ``records`` -> the window engine's input: for each valid change of a table some feature reads, one row per
     * entity it concerns (the owner its row had before, which loses it unless it stays, and the owner after):
     * entity, id, table, row_key, lsn, commit_us, owns, event_us and the value columns of the after image; for any
     * other valid change (a heartbeat), one row with an empty entity, for the commit-time clock only; with a clock
     * topic in the route spec (Connect's offsets), one such row per offset commit of ours instead, with the spec's
     * clock table. Dead letters give nothing here (the archiver routes them).
     */
    public static Dataset<Row> routed(Dataset<Row> records, String decoderJson, String routeJson) {
        Decoder decoder = new Decoder(decoderJson);
        Router router = new Router(routeJson);
        org.apache.spark.sql.Column key = java.util.Arrays.asList(records.columns()).contains("key")
            ? records.col("key") : org.apache.spark.sql.functions.lit(null).cast("binary").as("key");
        return records.select(records.col("topic"), records.col("partition"), records.col("offset"),
                records.col("value"), key).mapPartitions(
            (MapPartitionsFunction<Row, Row>) rows -> new java.util.Iterator<Row>() {
                private final java.util.ArrayDeque<Row> ready = new java.util.ArrayDeque<>();

                public boolean hasNext() {
                    while (ready.isEmpty() && rows.hasNext()) {
                        Row in = rows.next();
                        if (router.isClock(in.getString(0))) {
                            router.tick((byte[]) in.get(4), (byte[]) in.get(3), ready);
                            continue;
                        }
                        Decoder.Result r = decoder.decode(in.getString(0), (byte[]) in.get(3));
                        if (r != null && r.reason == null) router.route(r, ready);
                    }
                    return !ready.isEmpty();
                }

                public Row next() {
                    return ready.poll();
                }
            }, Encoders.row(router.schema()));
    }

    private static Row row(Row in, Decoder.Result r, List<String> names) {
        boolean valid = r.reason == null;
        Object[] out = new Object[9 + 2 * names.size()];
        out[0] = in.getString(0);
        out[1] = in.getInt(1);
        out[2] = in.getLong(2);
        out[3] = r.table;
        out[4] = r.reason;
        if (valid) {
            out[5] = r.op;
            out[6] = r.key;
            out[7] = r.lsn;
            out[8] = r.commitUs;
            for (int i = 0; i < names.size(); i++) {
                out[9 + i] = r.before.get(names.get(i));
                out[9 + names.size() + i] = r.after.get(names.get(i));
            }
        }
        return RowFactory.create(out);
    }

    private static StructType schema(List<String> names, List<Boolean> text) {
        List<StructField> fields = new ArrayList<>();
        fields.add(DataTypes.createStructField("topic", DataTypes.StringType, false));
        fields.add(DataTypes.createStructField("partition", DataTypes.IntegerType, false));
        fields.add(DataTypes.createStructField("offset", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("table", DataTypes.StringType, true));
        fields.add(DataTypes.createStructField("reason", DataTypes.StringType, true));
        fields.add(DataTypes.createStructField("op", DataTypes.StringType, true));
        fields.add(DataTypes.createStructField("key", DataTypes.LongType, true));
        fields.add(DataTypes.createStructField("lsn", DataTypes.LongType, true));
        fields.add(DataTypes.createStructField("commit_us", DataTypes.LongType, true));
        for (String side : new String[] {"b", "a"}) {
            for (int i = 0; i < names.size(); i++) {
                DataType type = text.get(i) ? DataTypes.StringType : DataTypes.LongType;
                fields.add(DataTypes.createStructField(side + "_" + names.get(i), type, true));
            }
        }
        return DataTypes.createStructType(fields);
    }
}
