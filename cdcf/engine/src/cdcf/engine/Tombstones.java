package cdcf.engine;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * Rows taken away from an entity whose LSN is still kept, with the commit time of that change: a re-delivered
 * older version of such a row must stay a no-op. Once the commit time is older than the horizon (Debezium
 * re-delivers minutes, not days), the LSN is forgotten.
 */
final class Tombstones {
    static final int BYTES = 20;  // one tombstone written
    private final List<long[]> items = new ArrayList<>();  // {table index, row key, commit us}
    private int table;

    Tombstones forTable(int index) {
        table = index;
        return this;
    }

    void add(long rowKey, long commitUs) {
        items.add(new long[] {table, rowKey, commitUs});
    }

    /** Remove and return the tombstones committed at or before ``horizonUs``. */
    List<long[]> expire(long horizonUs) {
        List<long[]> expired = new ArrayList<>();
        items.removeIf(t -> t[2] <= horizonUs && expired.add(t));
        return expired;
    }

    void read(ByteBuffer in, int count) {
        items.clear();
        for (int n = 0; n < count; n++) items.add(new long[] {in.getInt(), in.getLong(), in.getLong()});
    }

    void write(ByteBuffer out) {
        for (long[] t : items) out.putInt((int) t[0]).putLong(t[1]).putLong(t[2]);
    }

    int size() {
        return items.size();
    }

    int bytes() {
        return items.size() * BYTES;
    }
}
