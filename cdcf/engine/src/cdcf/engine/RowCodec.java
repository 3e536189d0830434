package cdcf.engine;

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.expressions.GenericRowWithSchema;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * The engine's input rows (Router.schema: strings, longs and booleans, any of them null) as bytes, for the changes
 * an entity keeps in its state until the clock passes them.
 */
final class RowCodec {
    private RowCodec() {
    }

    /** The rows as bytes; null for none. */
    static byte[] encode(List<Row> rows, StructType schema) {
        if (rows.isEmpty()) return null;
        DataType[] types = types(schema);
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(rows.size() * 64);
        try (DataOutputStream out = new DataOutputStream(bytes)) {
            out.writeInt(rows.size());
            for (Row r : rows) {
                for (int i = 0; i < types.length; i++) {
                    out.writeBoolean(r.isNullAt(i));
                    if (r.isNullAt(i)) continue;
                    if (types[i] == DataTypes.LongType) out.writeLong(r.getLong(i));
                    else if (types[i] == DataTypes.BooleanType) out.writeBoolean(r.getBoolean(i));
                    else {
                        byte[] utf8 = r.getString(i).getBytes(StandardCharsets.UTF_8);
                        out.writeInt(utf8.length);
                        out.write(utf8);
                    }
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return bytes.toByteArray();
    }

    /** The rows in ``bytes`` (null: none), in a list the caller may change. */
    static List<Row> decode(byte[] bytes, StructType schema) {
        List<Row> rows = new ArrayList<>();
        if (bytes == null) return rows;
        DataType[] types = types(schema);
        try (DataInputStream in = new DataInputStream(new java.io.ByteArrayInputStream(bytes))) {
            for (int n = in.readInt(); n > 0; n--) {
                Object[] values = new Object[types.length];
                for (int i = 0; i < types.length; i++) {
                    if (in.readBoolean()) continue;
                    if (types[i] == DataTypes.LongType) values[i] = in.readLong();
                    else if (types[i] == DataTypes.BooleanType) values[i] = in.readBoolean();
                    else {
                        byte[] utf8 = new byte[in.readInt()];
                        in.readFully(utf8);
                        values[i] = new String(utf8, StandardCharsets.UTF_8);
                    }
                }
                rows.add(new GenericRowWithSchema(values, schema));
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return rows;
    }

    private static DataType[] types(StructType schema) {
        DataType[] types = new DataType[schema.fields().length];
        for (int i = 0; i < types.length; i++) {
            DataType t = schema.fields()[i].dataType();
            if (t != DataTypes.LongType && t != DataTypes.BooleanType && t != DataTypes.StringType) {
                throw new IllegalArgumentException("the engine's input has a column of type " + t);
            }
            types[i] = t;
        }
        return types;
    }
}
