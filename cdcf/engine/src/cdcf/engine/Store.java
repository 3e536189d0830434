package cdcf.engine;

/** What the window core keeps of one event table for one entity: three kinds of value, all bytes. The stateful
 * processor backs it with Spark's state store (one instance per entity and call). */
interface Store {
    /** What a source row contributes to the entity: its last change's LSN and commit time, and its event time. */
    byte[] row(long rowKey);

    void putRow(long rowKey, byte[] value);

    void removeRow(long rowKey);

    /** The rows whose event time lies in one hour (the hour's start, in microseconds). */
    byte[] hour(long hourUs);

    void putHour(long hourUs, byte[] value);

    void removeHour(long hourUs);

    /** The partial aggregates of every non-empty hour. */
    byte[] tiles();

    void putTiles(byte[] value);

    /** Make what was put durable (a store may hold writes until then). */
    void flush();

    /**
     * Whether the store lives exactly as long as its TableCore (the backfill's memory): then the core's decoded
     * hours and tiles are the state, and nothing is encoded into bytes.
     */
    default boolean resident() {
        return false;
    }
}
