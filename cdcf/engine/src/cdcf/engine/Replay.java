package cdcf.engine;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;

/**
 * The backfill's side of the engine: an entity's whole history replayed through EntityCore, with its state in
 * memory. Changes come grouped by entity and sorted by commit time; the changes of one commit are applied
 * together and emitted as of that commit, and between commits every moment a window changes with no new change
 * is emitted as the streaming job's timers would (decay rows), up to ``endUs`` (exclusive).
 */
final class Replay implements Iterator<Row> {
    private final Spec spec;
    private final Iterator<Row> input;
    private final long endUs;
    private final Deque<Row> ready = new ArrayDeque<>();
    private EntityCore.Columns columns;
    private Row next;  // the first row of the next entity

    Replay(Spec spec, Iterator<Row> input, long endUs) {
        this.spec = spec;
        this.input = input;
        this.endUs = endUs;
    }

    @Override
    public boolean hasNext() {
        while (ready.isEmpty() && (next != null || input.hasNext())) replayOne();
        return !ready.isEmpty();
    }

    @Override
    public Row next() {
        if (!hasNext()) throw new java.util.NoSuchElementException();
        return ready.poll();
    }

    /** Read the next entity's changes (consecutive rows with its kind and id) and replay them into ``ready``. */
    private void replayOne() {
        Row first = next != null ? next : input.next();
        next = null;
        if (columns == null) columns = new EntityCore.Columns(first.schema());
        String kind = first.getString(columns.entity);
        long id = first.getLong(columns.id);
        List<Row> changes = new ArrayList<>();
        changes.add(first);
        while (input.hasNext()) {
            Row r = input.next();
            if (r.getLong(columns.id) != id || !r.getString(columns.entity).equals(kind)) {
                next = r;
                break;
            }
            changes.add(r);
        }
        Spec.Entity entity = spec.entities.get(kind);
        if (entity == null) return;
        List<Object[]> out = new ArrayList<>();
        new EntityCore(spec, entity, new MemoryState()).advance(kind, id, changes, columns, endUs - 1, endUs - 1, true, out);
        for (Object[] row : out) ready.add(RowFactory.create(row));
    }

    /** An entity's state in memory, for the length of its replay. */
    private static final class MemoryState implements EntityCore.State {
        private final Map<Integer, Store> tables = new HashMap<>();
        private byte[] profile, meta;

        public Store table(int index) { return tables.computeIfAbsent(index, i -> new MemoryStore()); }
        public byte[] profile() { return profile; }
        public void putProfile(byte[] value) { profile = value; }
        public byte[] meta() { return meta; }
        public void putMeta(byte[] value) { meta = value; }
    }

    private static final class MemoryStore implements Store {
        private final Map<Long, byte[]> rows = new HashMap<>(), hours = new HashMap<>();
        private byte[] tiles;

        public byte[] row(long rowKey) { return rows.get(rowKey); }
        public void putRow(long rowKey, byte[] value) { rows.put(rowKey, value); }
        public void removeRow(long rowKey) { rows.remove(rowKey); }
        public byte[] hour(long hourUs) { return hours.get(hourUs); }
        public void putHour(long hourUs, byte[] value) { hours.put(hourUs, value); }
        public void removeHour(long hourUs) { hours.remove(hourUs); }
        public byte[] tiles() { return tiles; }
        public void putTiles(byte[] value) { tiles = value.length == 0 ? null : value; }
        public void flush() { }
        public boolean resident() { return true; }
    }
}
