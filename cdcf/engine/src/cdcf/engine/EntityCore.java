package cdcf.engine;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.types.StructType;

/**
 * The features of one entity: its changes applied to the window core of each of its event tables (TableCore) and
 * to its profile row, and every feature finished as of a time. This is the one implementation of the window
 * semantics: the streaming processor (FeatureProcessor, state in Spark's state store) and the backfill (Replay,
 * state in memory, over the archived history) both run it, so their values agree by construction.
 *
 * <p>Input rows have the router's schema (Router.schema). Emits are strictly increasing in as-of time: an emit
 * asked for at or before the last one is made just after it, so a correction is always newer.
 */
final class EntityCore {
    static final int HEAD = 4;  // output: entity, id, as_of_us, decay, then the features

    /** Where an entity's state lives: one Store per event table, the profile row, and the meta value. */
    interface State {
        Store table(int index);

        byte[] profile();

        void putProfile(byte[] value);

        byte[] meta();

        void putMeta(byte[] value);
    }

    private final Spec spec;
    final Spec.Entity entity;
    private final State state;
    private final TableCore[] cores;
    final Meta meta;

    EntityCore(Spec spec, Spec.Entity entity, State state) {
        this.spec = spec;
        this.entity = entity;
        this.state = state;
        this.meta = Meta.read(state.meta());
        this.cores = new TableCore[entity.tables.length];
        for (int t = 0; t < cores.length; t++) cores[t] = new TableCore(entity.tables[t], state.table(t));
    }

    /**
     * Apply changes of this entity (in LSN order, whatever order they come in); return the commit time of the
     * latest one that was new, or Long.MIN_VALUE when none was (duplicates and replays change nothing).
     */
    long apply(List<Row> changes, Columns columns) {
        changes.sort(Comparator.comparingLong(r -> r.getLong(columns.lsn)));
        long horizonT = meta.lastAsOfUs == Long.MIN_VALUE ? Long.MIN_VALUE : meta.lastAsOfUs + 1;
        for (Row r : changes) horizonT = Math.max(horizonT, r.getLong(columns.commit));
        long applied = Long.MIN_VALUE;
        for (Row r : changes) {
            String table = r.getString(columns.table);
            boolean isNew;
            if (table.equals(entity.profileTable)) {
                isNew = applyProfile(r, columns);
            } else {
                int t = entity.tableIndex(table);
                isNew = cores[t].apply(r.getLong(columns.rowKey), r.getLong(columns.lsn), r.getLong(columns.commit),
                    r.getBoolean(columns.owns), r.isNullAt(columns.event) ? 0 : r.getLong(columns.event),
                    columns.nulls(r, cores[t].spec), columns.values(r, cores[t].spec),
                    horizonT - cores[t].spec.widestUs, meta.tombstones.forTable(t));
            }
            if (isNew) applied = Math.max(applied, r.getLong(columns.commit));
        }
        return applied;
    }

    /**
     * Bring the entity forward in time order: apply ``changes`` (sorted by commit time, then LSN) whose commit time
     * is at or before ``changesUntilUs``, and emit every decay moment at or before ``decayUntilUs`` before the
     * changes after it. Changes are emitted as of each commit (``everyCommit``: the backfill), or once per run of
     * commits up to the next decay moment (the stream: one emit per entity and micro-batch unless a window changes
     * between its changes). Every emitted row goes to ``out``; return how many changes (a prefix) were taken.
     */
    int advance(String kind, long id, List<Row> changes, Columns columns, long changesUntilUs, long decayUntilUs,
                boolean everyCommit, List<Object[]> out) {
        int i = 0;
        while (true) {
            long commit = i < changes.size() ? changes.get(i).getLong(columns.commit) : Long.MAX_VALUE;
            long due = meta.dueUs;
            boolean decays = due != Long.MAX_VALUE && due <= decayUntilUs;
            if (decays && due < commit) {
                out.add(emit(kind, id, due, true));
                continue;
            }
            if (i == changes.size() || commit > changesUntilUs) return i;
            long limit = everyCommit ? commit : decays ? Math.min(changesUntilUs, due) : changesUntilUs;
            int j = i;
            while (j < changes.size() && changes.get(j).getLong(columns.commit) <= limit) j++;
            long applied = apply(new ArrayList<>(changes.subList(i, j)), columns);
            i = j;
            if (applied != Long.MIN_VALUE) out.add(emit(kind, id, applied, false));
        }
    }

    /**
     * Every feature of the entity as of ``asOfUs`` (or just after the last emit, if that is later): the output
     * row. Afterwards ``due()`` is the next moment a window changes with no new change.
     */
    Object[] emit(String kind, long id, long asOfUs, boolean decay) {
        long asOf = Math.max(asOfUs, meta.lastAsOfUs + 1);  // none yet: MIN_VALUE + 1, below any time
        Object[] out = new Object[HEAD + spec.outputNames.size()];
        out[0] = kind;
        out[1] = id;
        out[2] = asOf;
        out[3] = decay;
        long due = Long.MAX_VALUE;
        long horizon = asOf - spec.tombstoneHorizonUs;
        for (int t = 0; t < cores.length; t++) {
            due = Math.min(due, cores[t].finish(asOf, out, HEAD));
            cores[t].evict(asOf - cores[t].spec.widestUs, meta.tombstones.forTable(t), horizon);
        }
        for (long[] expired : meta.tombstones.expire(horizon)) cores[(int) expired[0]].forget(expired[1]);
        for (TableCore core : cores) core.flush();
        profileValues(out);
        meta.lastAsOfUs = asOf;
        meta.dueUs = due;
        return out;
    }

    /** The next moment after the last emit at which a window changes with no new change (Long.MAX_VALUE: none). */
    long due() {
        return meta.dueUs;
    }

    /** Write the meta value (last as-of time, next decay moment, timer, tombstones, pending changes) back. */
    void save() {
        state.putMeta(meta.write());
    }

    // ---- the profile row ---------------------------------------------------------------------------------

    private boolean applyProfile(Row r, Columns columns) {
        byte[] stored = state.profile();
        long lsn = r.getLong(columns.lsn);
        if (stored != null && ByteBuffer.wrap(stored).getLong(0) >= lsn) return false;
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
        state.putProfile(out.array());
        return true;
    }

    private void profileValues(Object[] out) {
        if (entity.profileTable == null) return;
        byte[] stored = state.profile();
        if (stored == null) return;
        ByteBuffer in = ByteBuffer.wrap(stored);
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

    /**
     * Per entity: the last emitted T, the next decay moment, the timer set and the changes still waiting for the
     * clock (the stream only), and the tombstones. Written with a leading format mark; a value without it (before the
     * stream gated its changes) holds the last T, the timer (then always the decay moment) and the tombstones.
     */
    static final class Meta {
        private static final long FORMAT = 0x6364_6366_0000_0002L;  // "cdcf" 2: no µs time is this far out
        long lastAsOfUs = Long.MIN_VALUE;
        long dueUs = Long.MAX_VALUE;
        long timerMs = Long.MIN_VALUE;
        final Tombstones tombstones = new Tombstones();
        byte[] pending;  // the stream's changes not yet passed by the clock (FeatureProcessor's encoding), or null

        static Meta read(byte[] bytes) {
            Meta m = new Meta();
            if (bytes == null) return m;
            ByteBuffer in = ByteBuffer.wrap(bytes);
            if (in.getLong(0) != FORMAT) {
                m.lastAsOfUs = in.getLong();
                m.timerMs = in.getLong();
                m.dueUs = m.timerMs == Long.MIN_VALUE ? Long.MAX_VALUE : m.timerMs * 1000;
                m.tombstones.read(in, in.remaining() / Tombstones.BYTES);
                return m;
            }
            in.getLong();
            m.lastAsOfUs = in.getLong();
            m.dueUs = in.getLong();
            m.timerMs = in.getLong();
            m.tombstones.read(in, in.getInt());
            if (in.hasRemaining()) {
                m.pending = new byte[in.remaining()];
                in.get(m.pending);
            }
            return m;
        }

        byte[] write() {
            int size = 36 + tombstones.bytes() + (pending == null ? 0 : pending.length);
            ByteBuffer out = ByteBuffer.allocate(size).putLong(FORMAT).putLong(lastAsOfUs).putLong(dueUs)
                .putLong(timerMs).putInt(tombstones.size());
            tombstones.write(out);
            if (pending != null) out.put(pending);
            return out.array();
        }
    }

    /** Field positions of the input rows (the router's schema, the same for every row). */
    static final class Columns {
        final int entity, id, table, rowKey, lsn, commit, owns, event;
        private final java.util.Map<String, Integer> byName = new java.util.HashMap<>();

        private final StructType schema;

        Columns(StructType schema) {
            this.schema = schema;
            entity = schema.fieldIndex("entity"); id = schema.fieldIndex("id");
            table = schema.fieldIndex("table"); rowKey = schema.fieldIndex("row_key"); lsn = schema.fieldIndex("lsn");
            commit = schema.fieldIndex("commit_us"); owns = schema.fieldIndex("owns"); event = schema.fieldIndex("event_us");
        }

        int index(Row r, String name) {
            return byName.computeIfAbsent(name, schema::fieldIndex);
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
