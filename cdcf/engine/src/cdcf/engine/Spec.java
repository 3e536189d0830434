package cdcf.engine;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The feature declaration as the engine needs it, parsed from the JSON that cdcf/engine/__init__.py derives from
 * cdcf/features.py: per entity kind, the event tables with their value columns and window features, and the
 * profile table whose current row gives column features. Nothing about a feature is declared here.
 */
final class Spec implements Serializable {
    enum Agg { COUNT, SUM, AVG, MAX }

    static final class Feature implements Serializable {
        final String name;
        final Agg agg;
        final int value;     // index into the table's value columns; -1 for count
        final int window;    // index into the table's distinct windows
        final int out;       // output column (after entity, id, as_of_us)

        Feature(String name, Agg agg, int value, int window, int out) {
            this.name = name; this.agg = agg; this.value = value; this.window = window; this.out = out;
        }
    }

    static final class Table implements Serializable {
        final String name;
        final String[] values;   // input columns holding this table's values as unscaled longs
        final int[] scales;
        final long[] windowsUs;  // distinct windows, with
        final long[] hopsUs;     // the hop each advances by
        final Feature[] features;
        final long widestUs;

        Table(String name, String[] values, int[] scales, long[] windowsUs, long[] hopsUs, Feature[] features) {
            this.name = name; this.values = values; this.scales = scales; this.windowsUs = windowsUs;
            this.hopsUs = hopsUs; this.features = features;
            long widest = 0;
            for (long w : windowsUs) widest = Math.max(widest, w);
            this.widestUs = widest;
        }
    }

    static final class Column implements Serializable {
        final String column;     // input column
        final String dtype;      // int64 | float64 | string
        final int scale;
        final int out;

        Column(String column, String dtype, int scale, int out) {
            this.column = column; this.dtype = dtype; this.scale = scale; this.out = out;
        }
    }

    static final class Entity implements Serializable {
        final String name;
        final Table[] tables;
        final String profileTable;  // null when the entity has no column features
        final Column[] profile;

        Entity(String name, Table[] tables, String profileTable, Column[] profile) {
            this.name = name; this.tables = tables; this.profileTable = profileTable; this.profile = profile;
        }

        int tableIndex(String table) {
            for (int i = 0; i < tables.length; i++) if (tables[i].name.equals(table)) return i;
            return -1;
        }
    }

    final Map<String, Entity> entities = new HashMap<>();
    final List<String> outputNames = new ArrayList<>();
    final List<String> outputTypes = new ArrayList<>();
    final long tombstoneHorizonUs;

    private Spec(long tombstoneHorizonUs) {
        this.tombstoneHorizonUs = tombstoneHorizonUs;
    }

    static JsonNode tree(String json) {
        try {
            return new ObjectMapper().readTree(json);
        } catch (IOException e) {
            throw new UncheckedIOException("a spec from cdcf/engine/__init__.py is not JSON", e);
        }
    }

    static Spec parse(String json) {
        JsonNode root = tree(json);
        Spec spec = new Spec(root.get("tombstone_horizon_us").asLong());
        for (JsonNode out : root.get("outputs")) {
            spec.outputNames.add(out.get("name").asText());
            spec.outputTypes.add(out.get("dtype").asText());
        }
        for (JsonNode e : root.get("entities")) {
            List<Table> tables = new ArrayList<>();
            for (JsonNode t : e.get("tables")) {
                List<Feature> features = new ArrayList<>();
                for (JsonNode f : t.get("features")) {
                    features.add(new Feature(f.get("name").asText(), Agg.valueOf(f.get("agg").asText().toUpperCase()),
                        f.get("value").asInt(), f.get("window").asInt(), spec.out(f.get("name").asText())));
                }
                tables.add(new Table(t.get("name").asText(), strings(t.get("values")), ints(t.get("scales")),
                    longs(t.get("windows_us")), longs(t.get("hops_us")), features.toArray(new Feature[0])));
            }
            JsonNode p = e.get("profile");
            String profileTable = null;
            List<Column> columns = new ArrayList<>();
            if (p != null && !p.isNull()) {
                profileTable = p.get("table").asText();
                for (JsonNode c : p.get("columns")) {
                    columns.add(new Column(c.get("column").asText(), c.get("dtype").asText(), c.get("scale").asInt(),
                        spec.out(c.get("name").asText())));
                }
            }
            spec.entities.put(e.get("name").asText(), new Entity(e.get("name").asText(),
                tables.toArray(new Table[0]), profileTable, columns.toArray(new Column[0])));
        }
        return spec;
    }

    private int out(String feature) {
        int index = outputNames.indexOf(feature);
        if (index < 0) throw new IllegalArgumentException("feature " + feature + " is not among the outputs");
        return index;
    }

    private static String[] strings(JsonNode node) {
        String[] result = new String[node.size()];
        for (int i = 0; i < result.length; i++) result[i] = node.get(i).asText();
        return result;
    }

    private static int[] ints(JsonNode node) {
        int[] result = new int[node.size()];
        for (int i = 0; i < result.length; i++) result[i] = node.get(i).asInt();
        return result;
    }

    private static long[] longs(JsonNode node) {
        long[] result = new long[node.size()];
        for (int i = 0; i < result.length; i++) result[i] = node.get(i).asLong();
        return result;
    }
}
