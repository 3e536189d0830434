package cdcf.engine;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collections;
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
 * The stateful stage, keyed by entity (kind, id), on the executors: EntityCore over Spark's state store. Per key
 * and micro-batch: apply the changes routed to it, then, if any was new, emit every feature of the entity as of
 * T = the commit time of its latest applied change (or just after its last emitted T, so a correction is always
 * newer), and set one event-time timer at the next moment a window changes with no new change. A timer fires once the applied commit-time clock (the query's watermark) has passed it, and emits
 * as of its time. State: per event table the row index (LSNs), the hours' rows and the tiles; the profile row;
 * and a meta value (last T, timer, tombstones).
 */
public final class FeatureProcessor extends StatefulProcessor<Tuple2<String, Long>, Row, Row> {
    private final Spec spec;
    private transient ValueState<byte[]> meta;
    private transient java.util.Map<String, TableState> tables;
    private transient java.util.Map<String, ValueState<byte[]>> profiles;
    private transient EntityCore.Columns columns;

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
            return none();
        }
        List<Row> changes = new ArrayList<>();
        while (rows.hasNext()) changes.add(rows.next());
        if (columns == null) columns = new EntityCore.Columns(changes.get(0));
        EntityCore core = core(entity);
        long applied = core.apply(changes, columns);
        return applied == Long.MIN_VALUE ? none() : emit(key, core, applied, false);
    }

    @Override
    public Iterator<Row> handleExpiredTimer(Tuple2<String, Long> key, TimerValues timers, ExpiredTimerInfo info) {
        EntityCore core = core(spec.entities.get(key._1()));
        core.meta.timerMs = Long.MIN_VALUE;  // Spark deletes the timer that fired
        return emit(key, core, info.getExpiryTimeInMs() * 1000, true);
    }

    /** Emit, and set the one timer at the next moment a window changes with no new change. */
    private Iterator<Row> emit(Tuple2<String, Long> key, EntityCore core, long asOf, boolean decay) {
        Object[] out = core.emit(key._1(), key._2(), asOf, decay);
        long dueMs = core.due() == Long.MAX_VALUE ? Long.MIN_VALUE : Math.floorDiv(core.due(), 1000L);
        if (dueMs != core.meta.timerMs) {
            if (core.meta.timerMs != Long.MIN_VALUE) getHandle().deleteTimer(core.meta.timerMs);
            if (dueMs != Long.MIN_VALUE) getHandle().registerTimer(dueMs);
            core.meta.timerMs = dueMs;
        }
        core.save();
        return CollectionConverters.asScala(Collections.singletonList(RowFactory.create(out)).iterator());
    }

    private static Iterator<Row> none() {
        return CollectionConverters.asScala(Collections.<Row>emptyIterator());
    }

    /** The entity's core over its state in the state store (the store keys every variable by the current entity). */
    private EntityCore core(Spec.Entity entity) {
        ValueState<byte[]> profile = entity.profileTable == null ? null : profiles.get(entity.profileTable);
        return new EntityCore(spec, entity, new EntityCore.State() {
            public Store table(int index) { return new EntityStore(tables.get(entity.tables[index].name)); }
            public byte[] profile() { return profile.exists() ? profile.get() : null; }
            public void putProfile(byte[] value) { profile.update(value); }
            public byte[] meta() { return meta.exists() ? meta.get() : null; }
            public void putMeta(byte[] value) { meta.update(value); }
        });
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
}
