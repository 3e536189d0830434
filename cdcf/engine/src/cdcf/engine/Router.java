package cdcf.engine;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.Deque;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.catalyst.expressions.Murmur3HashFunction$;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.unsafe.types.UTF8String;

/** A decoded change -> the engine's input rows, one per entity it concerns (spec from cdcf/engine/__init__.py). */
final class Router implements Serializable {
    private static final class Source implements Serializable {
        final List<String[]> owners = new ArrayList<>();  // {entity, owner column}
        String event;  // event-time column, or null (the profile table)
    }

    private final Map<String, Source> sources = new HashMap<>();
    private final List<String> values = new ArrayList<>();
    private final List<Boolean> text = new ArrayList<>();
    // Connect's offsets topic, our connector's server name, and the table its clock rows carry; or null
    private final String clockTopic, server, captured;
    private final long[] clockIds;  // one clock row key per state partition: ("", clockIds[p]) lands in partition p

    Router(String json) {
        JsonNode spec = Spec.tree(json);
        JsonNode clock = spec.path("clock");
        clockTopic = clock.isObject() ? clock.get("topic").asText() : null;
        server = clock.isObject() ? clock.get("server").asText() : null;
        captured = clock.isObject() ? clock.get("table").asText() : null;
        clockIds = clock.isObject() ? keysOfEachPartition(clock.get("partitions").asInt()) : new long[0];
        for (JsonNode s : spec.get("sources")) {
            Source source = new Source();
            for (JsonNode o : s.get("owners")) source.owners.add(new String[] {o.get("entity").asText(), o.get("column").asText()});
            source.event = s.get("event").isNull() ? null : s.get("event").asText();
            sources.put(s.get("table").asText(), source);
        }
        spec.get("values").fields().forEachRemaining(e -> {
            values.add(e.getKey());
            text.add(e.getValue().asText().equals("string"));
        });
    }

    void route(Decoder.Result r, Deque<Row> out) {
        Source source = sources.get(r.table);
        if (source == null) {  // a heartbeat: its commit time moves the clock, nothing else
            out.add(row("", 0L, r, false, null, null));
            return;
        }
        boolean deleted = r.op.equals("d");
        Map<String, Object> after = deleted ? null : r.after;
        Long event = after == null || source.event == null ? null : (Long) after.get(source.event);
        for (String[] owner : source.owners) {
            Long before = r.before.isEmpty() ? null : (Long) r.before.get(owner[1]);
            Long now = after == null ? null : (Long) after.get(owner[1]);
            if (before != null && !before.equals(now)) out.add(row(owner[0], before, r, false, event, after));
            if (now != null) out.add(row(owner[0], now, r, true, event, after));
        }
    }

    boolean isClock(String topic) {
        return topic.equals(clockTopic);
    }

    /**
     * An offset commit of Connect: key ["connector", {"server": ...}], value Debezium's source offset. For our
     * server, clock rows at its ts_usec, one to each state partition (the engine reads the clock of its own
     * micro-batch from them): Connect commits an offset only once every record before it is acked by Kafka, so every
     * change committed up to that time is in its topic, whichever topic that is. Only offsets of streaming count,
     * those that name the last LSN processed (``lsn_proc``): a snapshot's offsets (``snapshot``) and the first offset
     * of the streaming that follows carry the snapshot's time, while changes committed after the snapshot's point
     * are still to be streamed, and a re-snapshot's deletes still to be sent (connectors/resnapshot.py). Anything
     * else (another connector, a reset's tombstone, an offset with no time) gives nothing.
     */
    void tick(byte[] key, byte[] value, Deque<Row> out) {
        if (key == null || value == null) return;
        try {
            JsonNode k = Spec.tree(new String(key, java.nio.charset.StandardCharsets.UTF_8));
            JsonNode v = Spec.tree(new String(value, java.nio.charset.StandardCharsets.UTF_8));
            if (!server.equals(k.path(1).path("server").asText(null)) || !v.path("ts_usec").canConvertToLong()
                || v.has("snapshot") || !v.has("lsn_proc")) return;
            Decoder.Result r = new Decoder.Result();
            r.table = captured;
            r.lsn = v.path("lsn").asLong(0);
            r.commitUs = v.get("ts_usec").asLong();
            for (long id : clockIds) out.add(row("", id, r, false, null, null));
        } catch (RuntimeException e) {
            // not an offset commit we can read: no tick
        }
    }

    /**
     * For each of ``n`` state partitions, the smallest id whose key ("", id) Spark's shuffle sends there: the
     * stateful operator hash-partitions its grouping columns (Murmur3, seed 42, each column's hash the next one's
     * seed, then pmod n).
     */
    static long[] keysOfEachPartition(int n) {
        long[] ids = new long[n];
        java.util.Arrays.fill(ids, -1);
        int h0 = (int) Murmur3HashFunction$.MODULE$.hash(UTF8String.fromString(""), DataTypes.StringType, 42L);
        for (long id = 0, found = 0; found < n; id++) {
            int p = Math.floorMod((int) Murmur3HashFunction$.MODULE$.hash(id, DataTypes.LongType, h0), n);
            if (ids[p] < 0) {
                ids[p] = id;
                found++;
            }
        }
        return ids;
    }

    private Row row(String entity, Long id, Decoder.Result r, boolean owns, Long event, Map<String, Object> after) {
        Object[] o = new Object[8 + values.size()];
        o[0] = entity; o[1] = id; o[2] = r.table; o[3] = r.key; o[4] = r.lsn; o[5] = r.commitUs; o[6] = owns; o[7] = event;
        for (int i = 0; i < values.size(); i++) o[8 + i] = after == null ? null : after.get(values.get(i));
        return RowFactory.create(o);
    }

    StructType schema() {
        List<StructField> fields = new ArrayList<>();
        fields.add(DataTypes.createStructField("entity", DataTypes.StringType, false));
        fields.add(DataTypes.createStructField("id", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("table", DataTypes.StringType, false));
        fields.add(DataTypes.createStructField("row_key", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("lsn", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("commit_us", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("owns", DataTypes.BooleanType, false));
        fields.add(DataTypes.createStructField("event_us", DataTypes.LongType, true));
        for (int i = 0; i < values.size(); i++) {
            fields.add(DataTypes.createStructField(values.get(i), text.get(i) ? DataTypes.StringType : DataTypes.LongType, true));
        }
        return DataTypes.createStructType(fields);
    }
}
