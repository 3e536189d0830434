package cdcf.engine;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.JsonNodeType;
import java.io.Serializable;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.regex.Pattern;

/**
 * cdcf/decoder.py's rules in the JVM, for the streaming job's stateless stage: one Kafka message of a
 * change topic -> a typed change or a dead-letter reason; never throws. Its constants, patterns, reason templates
 * and row contracts come from Python (cdcf/engine/__init__.py renders them from decoder.py and schemas/), and the
 * rules run in decoder.py's order, so both give every message the same verdict (tests/cdc_cases.py and a fuzz
 * corpus hold them to it).
 */
final class Decoder implements Serializable {
    static final class Column implements Serializable {
        final String name;
        final String kind;  // long | int | string | decimal | date | timestamp
        final boolean nullable;
        final int precision;
        final int scale;

        Column(JsonNode c) {
            name = c.get("name").asText(); kind = c.get("kind").asText(); nullable = c.get("nullable").asBoolean();
            precision = c.path("precision").asInt(0); scale = c.path("scale").asInt(0);
        }
    }

    static final class Contract implements Serializable {
        final String table;
        final String key;
        final List<Column> columns = new ArrayList<>();
        final TreeSet<String> names = new TreeSet<>(CODE_POINT_ORDER);

        Contract(String table, JsonNode c) {
            this.table = table;
            key = c.get("key").asText();
            for (JsonNode col : c.get("columns")) {
                columns.add(new Column(col));
                names.add(col.get("name").asText());
            }
        }
    }

    /** A verdict: a reason (dead letter), or the change's fields and its images' values, typed for the engine. */
    static final class Result {
        String table, reason, op;
        long key, lsn, commitUs;
        final Map<String, Object> before = new HashMap<>(), after = new HashMap<>();
    }

    private static final class Invalid extends Exception {
        Invalid(String reason) {
            super(reason, null, false, false);
        }
    }

    /** Python's order of strings: by code point, not by UTF-16 unit. */
    static final java.util.Comparator<String> CODE_POINT_ORDER =
        (java.util.Comparator<String> & Serializable) Decoder::byCodePoint;
    private static final BigInteger LONG_MIN = BigInteger.valueOf(Long.MIN_VALUE);
    private static final BigInteger LONG_MAX = BigInteger.valueOf(Long.MAX_VALUE);
    private static final long MIN_US = -62_135_596_800_000_000L, MAX_US = 253_402_300_799_999_999L;

    private final String prefix;
    private final Map<String, Contract> contracts = new HashMap<>();
    private final Map<String, String> reasons = new HashMap<>();
    private final Map<String, String> expected = new HashMap<>();
    private final int maxText, maxMessage;
    private final long[] dateDays, commitUs;
    private final Pattern tableName, zoned, naive, decimal, loneSurrogate;
    private transient ObjectMapper json;

    Decoder(String specJson) {
        JsonNode spec = Spec.tree(specJson);
        prefix = spec.get("prefix").asText();
        spec.get("contracts").fields().forEachRemaining(e -> contracts.put(e.getKey(), new Contract(e.getKey(), e.getValue())));
        spec.get("reasons").fields().forEachRemaining(e -> reasons.put(e.getKey(), e.getValue().asText()));
        spec.get("expected").fields().forEachRemaining(e -> expected.put(e.getKey(), e.getValue().asText()));
        JsonNode limits = spec.get("limits");
        maxText = limits.get("max_text").asInt();
        maxMessage = limits.get("max_message").asInt();
        dateDays = new long[] {limits.get("date_days").get(0).asLong(), limits.get("date_days").get(1).asLong()};
        commitUs = new long[] {limits.get("commit_us").get(0).asLong(), limits.get("commit_us").get(1).asLong()};
        JsonNode patterns = spec.get("patterns");
        tableName = Pattern.compile(patterns.get("table").asText());
        naive = Pattern.compile(patterns.get("timestamp").asText());
        zoned = Pattern.compile(patterns.get("timestamp").asText() + patterns.get("zone").asText());
        decimal = Pattern.compile(patterns.get("decimal").asText());
        loneSurrogate = Pattern.compile(patterns.get("lone_surrogate").asText());
    }

    private ObjectMapper json() {
        if (json == null) {
            JsonFactory factory = JsonFactory.builder()
                .streamReadConstraints(StreamReadConstraints.builder().maxNumberLength(1000).maxNestingDepth(1000).build())
                .build();
            factory.enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION);
            json = new ObjectMapper(factory).enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
        }
        return json;
    }

    /** The verdict of one message; null for a tombstone (a null value). */
    Result decode(String topic, byte[] value) {
        if (value == null) return null;
        Result r = new Result();
        try {
            decode(topic, value, r);
            r.reason = null;
        } catch (Invalid e) {
            r.reason = e.getMessage();
        } catch (RuntimeException | StackOverflowError e) {  // a rule this class missed: still a dead letter
            r.reason = "undecodable: " + e.getClass().getSimpleName();
        }
        return r;
    }

    private void decode(String topic, byte[] value, Result r) throws Invalid {
        Contract contract = contractFor(topic);
        r.table = contract.table;
        if (value.length > maxMessage) throw invalid("OVERSIZED");
        JsonNode envelope = parse(value);
        if (envelope.isObject() && envelope.has("payload") && envelope.has("schema")) envelope = envelope.get("payload");
        if (!envelope.isObject() || !envelope.has("op") || !envelope.has("source")) throw invalid("NOT_AN_EVENT");
        JsonNode op = envelope.get("op");
        if (!op.isTextual() || !List.of("c", "u", "d", "r").contains(op.asText())) throw invalid("UNSUPPORTED_OP");
        r.op = op.asText();
        source(envelope.get("source"), contract.table, r);
        boolean hasBefore = row(contract, envelope.get("before"), "before", r.before);
        boolean hasAfter = row(contract, envelope.get("after"), "after", r.after);
        if ("cr".contains(r.op) && !hasAfter) throw invalid("NO_AFTER", "op", r.op);
        if (r.op.equals("r")) {  // decoder.py: a snapshot's rows sit just before its LSN
            if (r.lsn == 0) throw invalid("SNAPSHOT_LSN");
            r.lsn -= 1;
        }
        if (r.op.equals("d") && !hasBefore) throw invalid("NO_BEFORE");
        if (r.op.equals("u") && !hasBefore) throw invalid("UPDATE_NO_BEFORE");
        if (r.op.equals("u") && !hasAfter) throw invalid("NO_AFTER", "op", r.op);
        r.key = (Long) (hasAfter ? r.after : r.before).get(contract.key);
    }

    private Contract contractFor(String topic) throws Invalid {
        String start = prefix + ".public.";
        String table = topic.startsWith(start) ? topic.substring(start.length()) : "";
        if (!tableName.matcher(table).matches()) throw invalid("NOT_A_CHANGE_TOPIC", "prefix", prefix);
        Contract contract = contracts.get(table);
        if (contract == null) throw invalid("UNKNOWN_TABLE", "table", table);
        return contract;
    }

    private JsonNode parse(byte[] value) throws Invalid {
        try {
            String text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(value)).toString();
            if (text.contains("\\u") && loneSurrogate.matcher(text).find()) throw invalid("MALFORMED");
            JsonNode node = json().readTree(text);
            if (node == null || node.isMissingNode()) throw invalid("MALFORMED");
            return node;
        } catch (CharacterCodingException | com.fasterxml.jackson.core.JacksonException e) {
            throw invalid("MALFORMED");
        }
    }

    private void source(JsonNode source, String table, Result r) throws Invalid {
        if (!source.isObject()) throw invalid("SOURCE_NOT_OBJECT");
        if (!isText(source.get("connector"), "postgresql") || !isText(source.get("name"), prefix)) {
            throw invalid("FOREIGN", "prefix", prefix);
        }
        if (!isText(source.get("table"), table) || !isText(source.get("schema"), "public")) {
            throw invalid("SOURCE_TABLE", "table", table);
        }
        JsonNode lsn = source.get("lsn");
        if (!isLong(lsn) || lsn.longValue() < 0) throw invalid("LSN");
        JsonNode txId = source.get("txId");
        if (txId != null && !txId.isNull() && !isLong(txId)) throw invalid("TX_ID");
        JsonNode micros = source.get("ts_us");
        BigInteger us;
        if (isLong(micros)) {
            us = BigInteger.valueOf(micros.longValue());
        } else {
            JsonNode millis = source.get("ts_ms");
            if (!isLong(millis)) throw invalid("NO_COMMIT_TIME");
            us = BigInteger.valueOf(millis.longValue()).multiply(BigInteger.valueOf(1000));
        }
        if (us.compareTo(BigInteger.valueOf(commitUs[0])) < 0 || us.compareTo(BigInteger.valueOf(commitUs[1])) > 0) {
            throw invalid("COMMIT_RANGE");
        }
        r.lsn = lsn.longValue();
        r.commitUs = us.longValue();
    }

    /** decoder._row: false for an absent image; else every column's typed value into ``out``. */
    private boolean row(Contract contract, JsonNode image, String which, Map<String, Object> out) throws Invalid {
        if (image == null || image.isNull()) return false;
        if (!image.isObject()) throw invalid("IMAGE_NOT_OBJECT", "which", which);
        TreeSet<String> missing = new TreeSet<>(CODE_POINT_ORDER);  // columns added upstream are ignored
        for (String name : contract.names) if (!image.has(name)) missing.add(name);
        if (!missing.isEmpty()) {
            throw invalid("DRIFT", "table", contract.table, "which", which, "missing", String.join(", ", missing));
        }
        for (Column c : contract.columns) out.put(c.name, value(contract.table + "." + c.name, c, image.get(c.name)));
        return true;
    }

    private Object value(String where, Column c, JsonNode raw) throws Invalid {
        if (raw.isNull()) {
            if (c.nullable) return null;
            throw invalid("NULL", "where", where);
        }
        if (raw.isTextual() && raw.asText().equals("__debezium_unavailable_value")) throw invalid("UNAVAILABLE", "where", where);
        boolean integral = c.kind.equals("long") || c.kind.equals("int") || c.kind.equals("date");
        if (integral ? !raw.isIntegralNumber() : !raw.isTextual()) {
            if (raw.isNumber() && c.kind.equals("date")) throw invalid("NOT_DATE", "where", where);
            if (raw.isNumber() && integral) throw invalid("NOT_INTEGER", "where", where, "kind", c.kind);
            throw invalid("WRONG_TYPE", "where", where, "expected", expected.get(c.kind), "got", jsonType(raw));
        }
        if (integral) {
            BigInteger n = raw.isInt() || raw.isLong() ? BigInteger.valueOf(raw.longValue()) : raw.bigIntegerValue();
            long low = c.kind.equals("date") ? dateDays[0] : c.kind.equals("int") ? Integer.MIN_VALUE : Long.MIN_VALUE;
            long high = c.kind.equals("date") ? dateDays[1] : c.kind.equals("int") ? Integer.MAX_VALUE : Long.MAX_VALUE;
            if (n.compareTo(BigInteger.valueOf(low)) < 0 || n.compareTo(BigInteger.valueOf(high)) > 0) {
                throw c.kind.equals("date") ? invalid("NOT_DATE", "where", where)
                    : invalid("NOT_INTEGER", "where", where, "kind", c.kind);
            }
            return n.longValue();
        }
        String text = raw.asText();
        if (text.indexOf('\0') >= 0) throw invalid("NUL", "where", where);
        switch (c.kind) {
            case "string":
                if (text.codePointCount(0, text.length()) > maxText) throw invalid("OVERSIZED_TEXT", "where", where);
                return text;
            case "decimal":
                return decimal(where, c, text);
            default:
                return timestamp(where, text);
        }
    }

    private long decimal(String where, Column c, String text) throws Invalid {
        java.util.regex.Matcher m = decimal.matcher(text);
        if (!m.matches()) throw invalid("NOT_DECIMAL", "where", where);
        String whole = m.group(1).replaceFirst("^0+", ""), fraction = m.group(3) == null ? "" : m.group(3);
        if (fraction.length() > c.scale) throw invalid("SCALE", "where", where, "scale", String.valueOf(c.scale));
        if (whole.length() > c.precision - c.scale) {
            throw invalid("PRECISION", "where", where, "precision", String.valueOf(c.precision),
                "scale", String.valueOf(c.scale));
        }
        return new BigDecimal(text).setScale(c.scale).unscaledValue().longValueExact();
    }

    private long timestamp(String where, String text) throws Invalid {
        if (!zoned.matcher(text).matches()) {
            throw invalid(naive.matcher(text).matches() ? "NO_ZONE" : "NOT_TIMESTAMP", "where", where);
        }
        OffsetDateTime at;
        try {
            at = OffsetDateTime.parse(text.replace(' ', 'T'), DateTimeFormatter.ISO_OFFSET_DATE_TIME);
        } catch (DateTimeParseException e) {
            throw invalid("NOT_TIMESTAMP", "where", where);
        }
        java.time.Instant instant = at.toInstant();
        BigInteger us = BigInteger.valueOf(instant.getEpochSecond()).multiply(BigInteger.valueOf(1_000_000))
            .add(BigInteger.valueOf(instant.getNano() / 1000));
        if (us.compareTo(BigInteger.valueOf(MIN_US)) < 0 || us.compareTo(BigInteger.valueOf(MAX_US)) > 0) {
            throw invalid("TIMESTAMP_RANGE", "where", where);
        }
        return us.longValue();
    }

    private static boolean isText(JsonNode node, String value) {
        return node != null && node.isTextual() && node.asText().equals(value);
    }

    /** decoder._is_long: a JSON integer that fits a long. */
    private static boolean isLong(JsonNode node) {
        if (node == null || !node.isIntegralNumber()) return false;
        if (node.isInt() || node.isLong()) return true;
        BigInteger n = node.bigIntegerValue();
        return n.compareTo(LONG_MIN) >= 0 && n.compareTo(LONG_MAX) <= 0;
    }

    private static String jsonType(JsonNode node) {
        JsonNodeType type = node.getNodeType();
        switch (type) {
            case BOOLEAN: return "boolean";
            case NUMBER: return "number";
            case STRING: return "string";
            case OBJECT: return "object";
            case ARRAY: return "array";
            default: return "null";
        }
    }

    static int byCodePoint(String a, String b) {
        int i = 0, j = 0;
        while (i < a.length() && j < b.length()) {
            int x = a.codePointAt(i), y = b.codePointAt(j);
            if (x != y) return Integer.compare(x, y);
            i += Character.charCount(x);
            j += Character.charCount(y);
        }
        return Integer.compare(a.length() - i, b.length() - j);
    }

    /** The reason's template with its {placeholders} filled in one pass (as Python's str.format). */
    private Invalid invalid(String reason, String... fill) {
        String template = reasons.get(reason);
        StringBuilder out = new StringBuilder();
        int at = 0;
        while (at < template.length()) {
            int open = template.indexOf('{', at), close = open < 0 ? -1 : template.indexOf('}', open);
            if (close < 0) break;
            String name = template.substring(open + 1, close), value = null;
            for (int k = 0; k < fill.length; k += 2) if (fill[k].equals(name)) value = fill[k + 1];
            out.append(template, at, open).append(value == null ? template.substring(open, close + 1) : value);
            at = close + 1;
        }
        return new Invalid(out.append(template.substring(at)).toString());
    }
}
