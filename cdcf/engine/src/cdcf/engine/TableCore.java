package cdcf.engine;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import java.util.Set;
import java.util.TreeMap;

/**
 * The window core of one event table for one entity (pure: no Spark, no I/O beyond its Store).
 *
 * <p>Each source row the entity owns is kept in the hour of its event time with its values; each non-empty hour
 * has a tile of partial aggregates (count, and per value column the sum, the non-null count, the max and the
 * oldest event time), always recomputed from the hour's own rows, so retraction is exact for max too. A window
 * (T - W, T] is finished from the tiles strictly inside it plus the rows of its two edge hours: an emit costs
 * O(tiles + edge rows), never O(rows in 30 days).
 *
 * <p>A change is applied only if its LSN is newer than the one the row last had here: duplicates and replays
 * are no-ops, and a retraction removes what this entity actually counted (its stored version), whatever the
 * event's before image says.
 */
final class TableCore {
    static final long HOUR_US = 3_600_000_000L;
    private static final double[] POW10 = {1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12};

    final Spec.Table spec;
    private final Store store;
    private final int nv;
    private TreeMap<Long, Tile> tiles;  // loaded on first use
    private final Map<Long, List<Entry>> hours = new HashMap<>();
    private final Set<Long> dirtyHours = new HashSet<>();    // tiles to recompute
    private final Set<Long> changedHours = new HashSet<>();  // hours to write back
    private boolean tilesDirty;

    TableCore(Spec.Table spec, Store store) {
        this.spec = spec;
        this.store = store;
        this.nv = spec.values.length;
    }

    /** One source row in an hour: its key, event time and values (bit i of nulls set: value i is null). */
    static final class Entry {
        final long rowKey;
        final long eventUs;
        final long nulls;
        final long[] values;

        Entry(long rowKey, long eventUs, long nulls, long[] values) {
            this.rowKey = rowKey; this.eventUs = eventUs; this.nulls = nulls; this.values = values;
        }
    }

    /** Partial aggregates of one hour. */
    static final class Tile {
        long count;
        long minEventUs = Long.MAX_VALUE;
        final long[] sum, nonNull, max;

        Tile(int nv) {
            sum = new long[nv]; nonNull = new long[nv]; max = new long[nv];
        }

        void add(Entry e) {
            count++;
            minEventUs = Math.min(minEventUs, e.eventUs);
            for (int i = 0; i < sum.length; i++) {
                if ((e.nulls & (1L << i)) != 0) continue;
                max[i] = nonNull[i] == 0 ? e.values[i] : Math.max(max[i], e.values[i]);
                sum[i] += e.values[i];
                nonNull[i]++;
            }
        }

        void merge(Tile t) {
            count += t.count;
            minEventUs = Math.min(minEventUs, t.minEventUs);
            for (int i = 0; i < sum.length; i++) {
                if (t.nonNull[i] == 0) continue;
                max[i] = nonNull[i] == 0 ? t.max[i] : Math.max(max[i], t.max[i]);
                sum[i] += t.sum[i];
                nonNull[i] += t.nonNull[i];
            }
        }
    }

    // ---- applying changes -------------------------------------------------------------------------------

    /**
     * Apply one change of a row to this entity: ``owns`` says the row's new version belongs to it (an insert,
     * an update that keeps or brings it here); otherwise the change takes the row away (a delete, or a move to
     * another owner). Rows dated at or before ``cutoffUs`` can count in no window from now on and are not kept.
     * Returns whether the change was newer than what the row had here (else it changed nothing).
     */
    boolean apply(long rowKey, long lsn, long commitUs, boolean owns, long eventUs, long nulls, long[] values,
                  long cutoffUs, Tombstones tombstones) {
        byte[] stored = store.row(rowKey);
        ByteBuffer old = stored == null ? null : ByteBuffer.wrap(stored);
        if (old != null && old.getLong(0) >= lsn) return false;
        boolean wasPresent = old != null && old.get(16) == 1;
        if (wasPresent) removeEntry(old.getLong(17), rowKey);
        if (owns && eventUs > cutoffUs) {
            addEntry(new Entry(rowKey, eventUs, nulls, values));
            store.putRow(rowKey, rowValue(lsn, commitUs, true, eventUs));
        } else if (old != null) {  // keep the LSN, so an older re-delivered version cannot come back
            store.putRow(rowKey, rowValue(lsn, commitUs, false, 0));
            tombstones.add(rowKey, commitUs);
        }
        return true;
    }

    static byte[] rowValue(long lsn, long commitUs, boolean present, long eventUs) {
        return ByteBuffer.allocate(25).putLong(lsn).putLong(commitUs).put((byte) (present ? 1 : 0))
            .putLong(eventUs).array();
    }

    private void addEntry(Entry e) {
        long h = hourOf(e.eventUs);
        hourRows(h).add(e);
        touch(h);
    }

    private void removeEntry(long eventUs, long rowKey) {
        long h = hourOf(eventUs);
        hourRows(h).removeIf(e -> e.rowKey == rowKey);
        touch(h);
    }

    private void touch(long h) {
        dirtyHours.add(h);
        changedHours.add(h);
    }

    static long hourOf(long us) {
        return Math.floorDiv(us, HOUR_US) * HOUR_US;
    }

    private List<Entry> hourRows(long h) {
        List<Entry> rows = hours.get(h);
        if (rows == null) {
            rows = decodeHour(store.hour(h));
            hours.put(h, rows);
        }
        return rows;
    }

    private TreeMap<Long, Tile> tiles() {
        if (tiles == null) tiles = decodeTiles(store.tiles());
        return tiles;
    }

    /** Recompute the tiles of the hours changed since the last call from their rows. */
    private void retile() {
        for (long h : dirtyHours) {
            List<Entry> rows = hours.get(h);
            if (rows.isEmpty()) {
                tiles().remove(h);
            } else {
                Tile t = new Tile(nv);
                for (Entry e : rows) t.add(e);
                tiles().put(h, t);
            }
            tilesDirty = true;
        }
        dirtyHours.clear();
    }

    // ---- finishing windows ------------------------------------------------------------------------------

    /**
     * Every feature of this table as of T into ``out`` (by output column); returns the next moment any of its
     * windows changes with no new change (a row entering or leaving), rounded up to that window's hop, or
     * Long.MAX_VALUE when none will.
     */
    long finish(long asOfUs, Object[] out, int offset) {
        retile();
        long hiHour = hourOf(asOfUs);
        long entering = Long.MAX_VALUE;
        for (Entry e : hourRows(hiHour)) if (e.eventUs > asOfUs) entering = Math.min(entering, e.eventUs);
        Map.Entry<Long, Tile> later = tiles().higherEntry(hiHour);
        if (later != null) entering = Math.min(entering, later.getValue().minEventUs);

        long due = Long.MAX_VALUE;
        Tile[] windows = new Tile[spec.windowsUs.length];
        for (int w = 0; w < windows.length; w++) {
            long low = asOfUs - spec.windowsUs[w];
            Tile agg = new Tile(nv);
            long loHour = hourOf(low);
            for (Tile t : tiles().subMap(loHour, false, hiHour, false).values()) agg.merge(t);
            for (long h : loHour == hiHour ? new long[] {hiHour} : new long[] {loHour, hiHour}) {
                for (Entry e : hourRows(h)) if (e.eventUs > low && e.eventUs <= asOfUs) agg.add(e);
            }
            windows[w] = agg;
            long oldestLeaves = agg.count == 0 ? Long.MAX_VALUE : agg.minEventUs + spec.windowsUs[w];
            long moment = Math.min(entering, oldestLeaves);
            if (moment != Long.MAX_VALUE) due = Math.min(due, ceilTo(moment, spec.hopsUs[w]));
        }
        for (Spec.Feature f : spec.features) out[offset + f.out] = value(f, windows[f.window]);
        return due;
    }

    private Object value(Spec.Feature f, Tile agg) {
        switch (f.agg) {
            case COUNT:
                return agg.count;
            case SUM:
                return toDouble(agg.sum[f.value], spec.scales[f.value]);
            case AVG:
                return agg.nonNull[f.value] == 0 ? null
                    : toDouble(agg.sum[f.value], spec.scales[f.value]) / (double) agg.nonNull[f.value];
            default:
                return agg.nonNull[f.value] == 0 ? null : toDouble(agg.max[f.value], spec.scales[f.value]);
        }
    }

    /** The exact decimal unscaled / 10^scale, rounded once to a double (as Postgres' numeric::float8 does). */
    static double toDouble(long unscaled, int scale) {
        if (scale == 0) return (double) unscaled;
        if (Math.abs(unscaled) < (1L << 53)) return unscaled / POW10[scale];  // two exact operands: one rounding
        return Double.parseDouble(java.math.BigDecimal.valueOf(unscaled, scale).toString());
    }

    static long ceilTo(long us, long hopUs) {
        return -Math.floorDiv(-us, hopUs) * hopUs;
    }

    /** Forget the hours that no window can reach again: every row dated at or before ``cutoffUs``. */
    void evict(long cutoffUs, Tombstones tombstones, long horizonUs) {
        NavigableMap<Long, Tile> old = tiles().headMap(hourOf(cutoffUs), false);
        for (long h : new ArrayList<>(old.keySet())) {
            for (Entry e : hourRows(h)) {
                byte[] stored = store.row(e.rowKey);
                long commitUs = stored == null ? Long.MIN_VALUE : ByteBuffer.wrap(stored).getLong(8);
                if (commitUs > horizonUs) {  // changed recently: keep its LSN for a while
                    store.putRow(e.rowKey, rowValue(ByteBuffer.wrap(stored).getLong(0), commitUs, false, 0));
                    tombstones.add(e.rowKey, commitUs);
                } else {
                    store.removeRow(e.rowKey);
                }
            }
            hours.get(h).clear();
            touch(h);
        }
        retile();
    }

    /** Drop the LSN kept of a row taken away long enough ago (unless it came back since). */
    void forget(long rowKey) {
        byte[] stored = store.row(rowKey);
        if (stored != null && stored[16] == 0) store.removeRow(rowKey);
    }

    /** Write what changed back to the store (a resident store keeps the decoded hours and tiles instead). */
    void flush() {
        retile();
        if (store.resident()) {
            for (long h : changedHours) if (hours.get(h).isEmpty()) hours.remove(h);
            changedHours.clear();
            tilesDirty = false;
            return;
        }
        for (long h : changedHours) {
            List<Entry> rows = hours.get(h);
            if (rows.isEmpty()) store.removeHour(h); else store.putHour(h, encodeHour(rows));
        }
        if (tilesDirty) store.putTiles(encodeTiles(tiles));
        store.flush();
        hours.clear();
        changedHours.clear();
        tiles = null;
        tilesDirty = false;
    }

    // ---- codecs -----------------------------------------------------------------------------------------

    private List<Entry> decodeHour(byte[] bytes) {
        List<Entry> rows = new ArrayList<>();
        if (bytes == null) return rows;
        ByteBuffer in = ByteBuffer.wrap(bytes);
        while (in.hasRemaining()) {
            long rowKey = in.getLong(), eventUs = in.getLong(), nulls = in.get();
            long[] values = new long[nv];
            for (int i = 0; i < nv; i++) values[i] = in.getLong();
            rows.add(new Entry(rowKey, eventUs, nulls, values));
        }
        return rows;
    }

    private byte[] encodeHour(List<Entry> rows) {
        ByteBuffer out = ByteBuffer.allocate(rows.size() * (17 + 8 * nv));
        for (Entry e : rows) {
            out.putLong(e.rowKey).putLong(e.eventUs).put((byte) e.nulls);
            for (long v : e.values) out.putLong(v);
        }
        return out.array();
    }

    private TreeMap<Long, Tile> decodeTiles(byte[] bytes) {
        TreeMap<Long, Tile> result = new TreeMap<>();
        if (bytes == null) return result;
        ByteBuffer in = ByteBuffer.wrap(bytes);
        while (in.hasRemaining()) {
            long hour = in.getLong();
            Tile t = new Tile(nv);
            t.count = in.getLong();
            t.minEventUs = in.getLong();
            for (int i = 0; i < nv; i++) {
                t.sum[i] = in.getLong(); t.nonNull[i] = in.getLong(); t.max[i] = in.getLong();
            }
            result.put(hour, t);
        }
        return result;
    }

    private byte[] encodeTiles(TreeMap<Long, Tile> tiles) {
        ByteBuffer out = ByteBuffer.allocate(tiles.size() * (24 + 24 * nv));
        for (Map.Entry<Long, Tile> e : tiles.entrySet()) {
            Tile t = e.getValue();
            out.putLong(e.getKey()).putLong(t.count).putLong(t.minEventUs);
            for (int i = 0; i < nv; i++) out.putLong(t.sum[i]).putLong(t.nonNull[i]).putLong(t.max[i]);
        }
        return out.array();
    }
}
