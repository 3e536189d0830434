package cdcf.engine;

import java.util.ArrayList;
import java.util.List;
import org.apache.spark.api.java.function.MapFunction;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import scala.Tuple2;

/** The entry points PySpark calls through py4j: routed change rows in, one feature row per emit out. */
public final class Engine {
    private Engine() {
    }

    /**
     * Group ``changes`` (entity, id, table, row_key, lsn, commit_us, owns, event_us and the value columns) by
     * entity and run the feature processor over them with event-time timers; the query must carry a watermark
     * (the commit-time clock). ``clockTable``: the table of the router's clock rows (Connect's offset commits), whose
     * time each change waits for (FeatureProcessor, less ``settleMs``); null: changes apply on arrival.
     */
    public static Dataset<Row> features(Dataset<Row> changes, String specJson, String clockTable, long settleMs) {
        Spec spec = Spec.parse(specJson);
        return changes
            .groupByKey((MapFunction<Row, Tuple2<String, Long>>) r -> new Tuple2<>(r.getString(0), r.getLong(1)),
                Encoders.tuple(Encoders.STRING(), Encoders.LONG()))
            .transformWithState(new FeatureProcessor(spec, changes.schema(), clockTable, settleMs), TimeMode.EventTime(), OutputMode.Update(),
                Encoders.row(outputSchema(spec)));
    }

    /**
     * The backfill: every entity's routed history (the same columns), replayed through the same core on the
     * executors; one row per emit with as-of time before ``endUs``, decay moments included.
     */
    public static Dataset<Row> replay(Dataset<Row> changes, String specJson, long endUs) {
        Spec spec = Spec.parse(specJson);
        return changes
            .repartition(changes.col("entity"), changes.col("id"))
            .sortWithinPartitions("entity", "id", "commit_us", "lsn")
            .mapPartitions((MapPartitionsFunction<Row, Row>) rows -> new Replay(spec, rows, endUs),
                Encoders.row(outputSchema(spec)));
    }

    static StructType outputSchema(Spec spec) {
        List<StructField> fields = new ArrayList<>();
        fields.add(DataTypes.createStructField("entity", DataTypes.StringType, false));
        fields.add(DataTypes.createStructField("id", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("as_of_us", DataTypes.LongType, false));
        fields.add(DataTypes.createStructField("decay", DataTypes.BooleanType, false));
        for (int i = 0; i < spec.outputNames.size(); i++) {
            fields.add(DataTypes.createStructField(spec.outputNames.get(i), type(spec.outputTypes.get(i)), true));
        }
        return DataTypes.createStructType(fields);
    }

    private static DataType type(String dtype) {
        switch (dtype) {
            case "int64": return DataTypes.LongType;
            case "float64": return DataTypes.DoubleType;
            default: return DataTypes.StringType;
        }
    }
}
