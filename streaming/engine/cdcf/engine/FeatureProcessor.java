package cdcf.engine;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.List;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.streaming.ExpiredTimerInfo;
import org.apache.spark.sql.streaming.MapState;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TTLConfig;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.sql.streaming.ValueState;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;

/**
 * The stateful stage, keyed by entity (kind, id), on the executors. Per key and micro-batch: apply the changes
 * routed to it in LSN order (TableCore per event table, the profile row), then, if any was new, emit every
 * feature of the entity as of T = the commit time of its latest applied change (or just after its last emitted
 * T, so a correction is always newer), and set one event-time timer at the next moment a window changes with no
 * new change. A timer fires once the applied commit-time clock (the query's watermark) has passed it, and emits
 * as of its time. State: per event table the row index (LSNs), the hours' rows and the tiles; the profile row;
 * and a meta value (last T, timer, tombstones).
 */
public final class FeatureProcessor extends StatefulProcessor<Tuple2<String, Long>, Row, Row> {
    private static final int HEAD = 4;  // output: entity, id, as_of_us, decay, then the features

    private final Spec spec;
    private transient ValueState<byte[]> meta;
    private transient java.util.Map<String, TableState> tables;
    private transient java.util.Map<String, ValueState<byte[]>> profiles;
    private transient Columns columns;

    FeatureProcessor(Spec spec) {
        this.spec = spec;
    }

    @Override
    public void init(OutputMode outputMode, TimeMode timeMode) {
        TTLConfig none = TTLConfig.NONE();
        meta = getHandle().getValueState("meta", Encoders.BINARY(), none);
        tables = new java.util.HashMap<>();
        profiles = new java.util.HashMap<>();
        for (Spec.Entity e : spec.entities.values()) {
            for (Spec.Table t : e.tables) {
                tables.computeIfAbsent(t.name, name -> new TableState(
                    getHandle().getValueState("rows_" + name, Encoders.BINARY(), none),
                    getHandle().getMapState("hours_" + name, Encoders.LONG(), Encoders.BINARY(), none),
                    getHandle().getValueState("tiles_" + name, Encoders.BINARY(), none)));
            }
            if (e.profileTable != null) {
                profiles.computeIfAbsent(e.profileTable,
                    name -> getHandle().getValueState("profile_" + name, Encoders.BINARY(), none));
            }
        }
    }

    @Override
    public Iterator<Row> handleInputRows(Tuple2<String, Long> key, Iterator<Row> rows, TimerValues timers) {
        Spec.Entity entity = spec.entities.get(key._1());
        if (entity == null) {  // the clock's rows (heartbeats): they only moved the watermark
            while (rows.hasNext()) rows.next();
            return CollectionConverters.asScala(Collections.<Row>emptyIterator());
        }
        List<Row> changes = new ArrayList<>();
        while (rows.hasNext()) changes.add(rows.next());
        if (columns == null) columns = new Columns(changes.get(0));
        changes.sort(Comparator.comparingLong(r -> r.getLong(columns.lsn)));

        Meta m = Meta.read(meta.exists() ? meta.get() : null);
        long horizonT = m.lastAsOfUs == Long.MIN_VALUE ? Long.MIN_VALUE : m.lastAsOfUs + 1;
        for (Row r : changes) horizonT = Math.max(horizonT, r.getLong(columns.commit));
        TableCore[] cores = cores(entity);
        long applied = Long.MIN_VALUE;
        for (Row r : changes) {
            String table = r.getString(columns.table);
            boolean isNew;
            if (table.equals(entity.profileTable)) {
                isNew = applyProfile(entity, r);
            } else {
                int t = entity.tableIndex(table);
                isNew = cores[t].apply(r.getLong(columns.rowKey), r.getLong(columns.lsn), r.getLong(columns.commit),
                    r.getBoolean(columns.owns), r.isNullAt(columns.event) ? 0 : r.getLong(columns.event),
                    columns.nulls(r, cores[t].spec), columns.values(r, cores[t].spec),
                    horizonT - cores[t].spec.widestUs, m.tombstones.forTable(t));
            }
            if (isNew) applied = Math.max(applied, r.getLong(columns.commit));
        }
        if (applied == Long.MIN_VALUE) return CollectionConverters.asScala(Collections.<Row>emptyIterator());
        long asOf = m.lastAsOfUs == Long.MIN_VALUE ? applied : Math.max(applied, m.lastAsOfUs + 1);
        return emit(key, entity, cores, m, asOf, false);
    }

    @Override
    public Iterator<Row> handleExpiredTimer(Tuple2<String, Long> key, TimerValues timers, ExpiredTimerInfo info) {
        Spec.Entity entity = spec.entities.get(key._1());
        Meta m = Meta.read(meta.exists() ? meta.get() : null);
        m.timerMs = Long.MIN_VALUE;  // Spark deletes the timer that fired
        long asOf = Math.max(info.getExpiryTimeInMs() * 1000, m.lastAsOfUs + 1);
        return emit(key, entity, cores(entity), m, asOf, true);
    }

    private Iterator<Row> emit(Tuple2<String, Long> key, Spec.Entity entity, TableCore[] cores, Meta m, long asOf,
                               boolean decay) {
        Object[] out = new Object[HEAD + spec.outputNames.size()];
        out[0] = key._1();
        out[1] = key._2();
        out[2] = asOf;
        out[3] = decay;
        long due = Long.MAX_VALUE;
        long horizon = asOf - spec.tombstoneHorizonUs;
        for (int t = 0; t < cores.length; t++) {
            due = Math.min(due, cores[t].finish(asOf, out, HEAD));
            cores[t].evict(asOf - cores[t].spec.widestUs, m.tombstones.forTable(t), horizon);
        }
        for (long[] expired : m.tombstones.expire(horizon)) cores[(int) expired[0]].forget(expired[1]);
        for (TableCore core : cores) core.flush();
        if (entity.profileTable != null) profileValues(entity, out);
        long dueMs = due == Long.MAX_VALUE ? Long.MIN_VALUE : Math.floorDiv(due, 1000L);
        if (dueMs != m.timerMs) {
            if (m.timerMs != Long.MIN_VALUE) getHandle().deleteTimer(m.timerMs);
            if (dueMs != Long.MIN_VALUE) getHandle().registerTimer(dueMs);
            m.timerMs = dueMs;
        }
        m.lastAsOfUs = asOf;
        meta.update(m.write());
        return CollectionConverters.asScala(Collections.singletonList(RowFactory.create(out)).iterator());
    }

    private TableCore[] cores(Spec.Entity entity) {
        TableCore[] cores = new TableCore[entity.tables.length];
        for (int t = 0; t < cores.length; t++) {
            cores[t] = new TableCore(entity.tables[t], new EntityStore(tables.get(entity.tables[t].name)));
        }
        return cores;
    }

    // ---- the profile row ---------------------------------------------------------------------------------

    private boolean applyProfile(Spec.Entity entity, Row r) {
        ValueState<byte[]> state = profiles.get(entity.profileTable);
        long lsn = r.getLong(columns.lsn);
        if (state.exists() && ByteBuffer.wrap(state.get()).getLong(0) >= lsn) return false;
        boolean present = r.getBoolean(columns.owns);
        List<byte[]> values = new ArrayList<>();
        int size = 9;
        for (Spec.Column c : entity.profile) {
            int i = columns.index(r, c.column);
            byte[] v = !present || r.isNullAt(i) ? null : c.dtype.equals("string")
                ? r.getString(i).getBytes(StandardCharsets.UTF_8)
                : ByteBuffer.allocate(8).putLong(r.getLong(i)).array();
            values.add(v);
            size += 4 + (v == null ? 0 : v.length);
        }
        ByteBuffer out = ByteBuffer.allocate(size).putLong(lsn).put((byte) (present ? 1 : 0));
        for (byte[] v : values) {
            out.putInt(v == null ? -1 : v.length);
            if (v != null) out.put(v);
        }
        state.update(out.array());
        return true;
    }

    private void profileValues(Spec.Entity entity, Object[] out) {
        ValueState<byte[]> state = profiles.get(entity.profileTable);
        if (!state.exists()) return;
        ByteBuffer in = ByteBuffer.wrap(state.get());
        in.getLong();
        in.get();
        for (Spec.Column c : entity.profile) {
            int length = in.getInt();
            if (length < 0) continue;
            byte[] v = new byte[length];
            in.get(v);
            long n = c.dtype.equals("string") ? 0 : ByteBuffer.wrap(v).getLong();
            out[HEAD + c.out] = c.dtype.equals("string") ? new String(v, StandardCharsets.UTF_8)
                : c.dtype.equals("int64") ? (Object) n : (Object) TableCore.toDouble(n, c.scale);
        }
    }

    // ---- plumbing ------------------------------------------------------------------------------------------

    /** Per key: the last emitted T, the timer set, and the tombstones. */
    private static final class Meta {
        long lastAsOfUs = Long.MIN_VALUE;
        long timerMs = Long.MIN_VALUE;
        final Tombstones tombstones = new Tombstones();

        static Meta read(byte[] bytes) {
            Meta m = new Meta();
            if (bytes == null) return m;
            ByteBuffer in = ByteBuffer.wrap(bytes);
            m.lastAsOfUs = in.getLong();
            m.timerMs = in.getLong();
            m.tombstones.read(in);
            return m;
        }

        byte[] write() {
            ByteBuffer out = ByteBuffer.allocate(16 + tombstones.bytes()).putLong(lastAsOfUs).putLong(timerMs);
            tombstones.write(out);
            return out.array();
        }
    }

    /** The state variables of one event table (the state store keys them by the current entity). */
    private static final class TableState implements java.io.Serializable {
        final ValueState<byte[]> rows, tiles;
        final MapState<Long, byte[]> hours;

        TableState(ValueState<byte[]> rows, MapState<Long, byte[]> hours, ValueState<byte[]> tiles) {
            this.rows = rows; this.hours = hours; this.tiles = tiles;
        }
    }

    /**
     * The Store of one event table for the current entity and call: its row index (every row's LSN, commit time,
     * presence and event time) is one value, read once and written once per call, not one state read per change.
     */
    private static final class EntityStore implements Store {
        private static final int ENTRY = 8 + 25;
        private final TableState state;
        private java.util.HashMap<Long, byte[]> rows;
        private boolean rowsChanged;

        EntityStore(TableState state) {
            this.state = state;
        }

        private java.util.HashMap<Long, byte[]> rows() {
            if (rows == null) {
                rows = new java.util.HashMap<>();
                if (state.rows.exists()) {
                    ByteBuffer in = ByteBuffer.wrap(state.rows.get());
                    while (in.hasRemaining()) {
                        long key = in.getLong();
                        byte[] value = new byte[ENTRY - 8];
                        in.get(value);
                        rows.put(key, value);
                    }
                }
            }
            return rows;
        }

        public byte[] row(long rowKey) { return rows().get(rowKey); }
        public void putRow(long rowKey, byte[] value) { rows().put(rowKey, value); rowsChanged = true; }
        public void removeRow(long rowKey) { rowsChanged |= rows().remove(rowKey) != null; }
        public byte[] hour(long hourUs) { return state.hours.getValue(hourUs); }
        public void putHour(long hourUs, byte[] value) { state.hours.updateValue(hourUs, value); }
        public void removeHour(long hourUs) { state.hours.removeKey(hourUs); }
        public byte[] tiles() { return state.tiles.exists() ? state.tiles.get() : null; }
        public void putTiles(byte[] value) { if (value.length == 0) state.tiles.clear(); else state.tiles.update(value); }

        public void flush() {
            if (!rowsChanged) return;
            if (rows.isEmpty()) {
                state.rows.clear();
            } else {
                ByteBuffer out = ByteBuffer.allocate(rows.size() * ENTRY);
                for (java.util.Map.Entry<Long, byte[]> e : rows.entrySet()) out.putLong(e.getKey()).put(e.getValue());
                state.rows.update(out.array());
            }
            rowsChanged = false;
        }
    }

    /** Field positions of the input rows (the same schema for every row). */
    private static final class Columns {
        final int table, rowKey, lsn, commit, owns, event;
        private final java.util.Map<String, Integer> byName = new java.util.HashMap<>();

        Columns(Row r) {
            table = r.fieldIndex("table"); rowKey = r.fieldIndex("row_key"); lsn = r.fieldIndex("lsn");
            commit = r.fieldIndex("commit_us"); owns = r.fieldIndex("owns"); event = r.fieldIndex("event_us");
        }

        int index(Row r, String name) {
            return byName.computeIfAbsent(name, r::fieldIndex);
        }

        long nulls(Row r, Spec.Table t) {
            long nulls = 0;
            for (int i = 0; i < t.values.length; i++) if (r.isNullAt(index(r, t.values[i]))) nulls |= 1L << i;
            return nulls;
        }

        long[] values(Row r, Spec.Table t) {
            long[] values = new long[t.values.length];
            for (int i = 0; i < values.length; i++) {
                int at = index(r, t.values[i]);
                values[i] = r.isNullAt(at) ? 0 : r.getLong(at);
            }
            return values;
        }
    }
}
