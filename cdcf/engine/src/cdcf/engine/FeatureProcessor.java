package cdcf.engine;

import java.nio.ByteBuffer;
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
import org.apache.spark.sql.types.StructType;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;

/**
 * The stateful stage, keyed by entity (kind, id), on the executors: EntityCore over Spark's state store.
 *
 * <p>The clock: every change committed at or before it is in Kafka. Gated (the live stream, whose clock is
 * Connect's committed source offsets), an entity's changes wait in its state until the clock passes their commit
 * time, then apply in commit order, so that an emit as of T holds every change committed at or before T whatever
 * topic it came by; ungated (topics filled before the query reads them; the clock is the applied commit time),
 * they apply on arrival. Gated, the clock is the later of the query's watermark (the offset commits read by earlier
 * micro-batches) and the offset commits of this micro-batch: the router sends each to every state partition, and
 * their key ("", id) sorts before every entity, so each partition reads them first.
 *
 * <p>Per key and call, EntityCore.advance applies what the clock allows and emits, in time order, each decay moment
 * the clock has passed and the changes applied (one emit per run of changes between decay moments); then one
 * event-time timer is set, at the next decay moment or, for a waiting change, once the watermark is within a
 * second of it (this micro-batch's offset commits usually cover it then). State: per event table the row index
 * (LSNs), the hours' rows and the tiles; the profile row; and a meta value (last T, next decay moment, timer,
 * tombstones, waiting changes).
 */
public final class FeatureProcessor extends StatefulProcessor<Tuple2<String, Long>, Row, Row> {
    static final long LOOKAHEAD_MS = 1000;
    private final Spec spec;
    private final StructType schema;
    private final String clockTable;  // the table of the clock rows (Router); null: ungated
    private final long settleMs;
    private transient ValueState<byte[]> meta;
    private transient java.util.Map<String, TableState> tables;
    private transient java.util.Map<String, ValueState<byte[]>> profiles;
    private transient EntityCore.Columns columns;
    private transient Comparator<Row> inCommitOrder;
    private transient long batchClockMs;  // the clock of this micro-batch's offset commits, in this partition

    FeatureProcessor(Spec spec, StructType schema, String clockTable, long settleMs) {
        this.spec = spec;
        this.schema = schema;
        this.clockTable = clockTable;
        this.settleMs = settleMs;
    }

    @Override
    public void init(OutputMode outputMode, TimeMode timeMode) {
        TTLConfig none = TTLConfig.NONE();
        meta = getHandle().getValueState("meta", Encoders.BINARY(), none);
        tables = new java.util.HashMap<>();
        profiles = new java.util.HashMap<>();
        columns = new EntityCore.Columns(schema);
        batchClockMs = Long.MIN_VALUE;
        inCommitOrder = Comparator.<Row>comparingLong(r -> r.getLong(columns.commit)).thenComparingLong(r -> r.getLong(columns.lsn));
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
        if (entity == null) {  // the clock's rows (as the watermark reads them: capped at the batch's time, in ms)
            long batchMs = timers.getCurrentProcessingTimeInMs();
            while (rows.hasNext()) {
                Row r = rows.next();
                if (clockTable != null && batchMs > 0 && clockTable.equals(r.getString(columns.table))) {
                    long tickMs = Math.floorDiv(Math.min(r.getLong(columns.commit), batchMs * 1000), 1000L);
                    batchClockMs = Math.max(batchClockMs, tickMs - settleMs);
                }
            }
            return none();
        }
        EntityCore core = core(entity);
        List<Row> changes = RowCodec.decode(core.meta.pending, schema);
        while (rows.hasNext()) changes.add(rows.next());
        return advance(key, core, changes, timers);
    }

    @Override
    public Iterator<Row> handleExpiredTimer(Tuple2<String, Long> key, TimerValues timers, ExpiredTimerInfo info) {
        EntityCore core = core(spec.entities.get(key._1()));
        if (core.meta.timerMs == info.getExpiryTimeInMs()) core.meta.timerMs = Long.MIN_VALUE;  // Spark deletes it
        return advance(key, core, RowCodec.decode(core.meta.pending, schema), timers);
    }

    /** Take the entity as far as the clock allows, keep the changes it does not yet allow, and set the one timer. */
    private Iterator<Row> advance(Tuple2<String, Long> key, EntityCore core, List<Row> changes, TimerValues timers) {
        changes.sort(inCommitOrder);
        long watermarkMs = timers.getCurrentWatermarkInMs();
        long clockUs = clockTable == null ? watermarkMs * 1000 : Math.max(watermarkMs, batchClockMs) * 1000;
        List<Object[]> out = new ArrayList<>();
        int taken = core.advance(key._1(), key._2(), changes, columns, clockTable == null ? Long.MAX_VALUE : clockUs,
            clockUs, false, out);
        List<Row> waiting = changes.subList(taken, changes.size());
        core.meta.pending = RowCodec.encode(waiting, schema);
        long timerMs = timerMs(core.due(), waiting.isEmpty() ? Long.MAX_VALUE : waiting.get(0).getLong(columns.commit),
            watermarkMs);
        if (timerMs != core.meta.timerMs) {
            if (core.meta.timerMs != Long.MIN_VALUE) getHandle().deleteTimer(core.meta.timerMs);
            if (timerMs != Long.MIN_VALUE) getHandle().registerTimer(timerMs);
            core.meta.timerMs = timerMs;
        }
        core.save();
        List<Row> rows = new ArrayList<>(out.size());
        for (Object[] row : out) rows.add(RowFactory.create(row));
        return CollectionConverters.asScala(rows.iterator());
    }

    /**
     * The one timer (Long.MIN_VALUE: none) for the next decay moment ``dueUs`` and the oldest waiting change
     * ``waitingUs`` (Long.MAX_VALUE: none). A timer fires once the watermark has reached it: at ⌈t / 1 ms⌉ it fires
     * once the watermark has reached t; a waiting change's fires once the watermark is within LOOKAHEAD_MS of it,
     * and not in this micro-batch (Spark deletes a timer that fired after its call, even one set again in it).
     */
    static long timerMs(long dueUs, long waitingUs, long watermarkMs) {
        long due = dueUs == Long.MAX_VALUE ? Long.MAX_VALUE : -Math.floorDiv(-dueUs, 1000L);
        long waiting = waitingUs == Long.MAX_VALUE ? Long.MAX_VALUE
            : Math.max(watermarkMs + 1, -Math.floorDiv(-waitingUs, 1000L) - LOOKAHEAD_MS);
        long timer = Math.min(due, waiting);
        return timer == Long.MAX_VALUE ? Long.MIN_VALUE : timer;
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
