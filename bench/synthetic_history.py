"""A synthetic change history for the batch benchmarks, written straight into a changelog table in the archive's
own format (the JSON images the archiver stores), so that millions of changes over 30 days cost a minute, not the
hours it would take through Debezium.

Row ``i`` of each table is a deterministic function of ``i`` (owner, amount, event time), so updates, owner moves
and deletes can restate the row without a join. The mix: transaction inserts (one in twenty backdated up to 29
days), amount updates, event-time moves, owner moves, deletes; session inserts and deletes; review inserts and
product moves; user snapshots and profile updates.
"""

from __future__ import annotations

from cdcf.changelog import DDL

MIX = {
    "transactions": 0.55,
    "txn_updates": 0.08,
    "txn_moves": 0.04,
    "txn_deletes": 0.03,
    "sessions": 0.18,
    "session_deletes": 0.02,
    "reviews": 0.06,
    "review_moves": 0.01,
    "user_updates": 0.03,
}
ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'"""


def _iso(expr: str) -> str:
    return f"to_char(({expr}) AT TIME ZONE 'UTC', {ISO})"


def statements(changes: int, users: int, products: int, days: int = 30) -> list[str]:
    """SQL that fills ``cdc_changelog`` with about ``changes`` changes spanning ``days`` days up to now."""
    n = {k: max(1, int(changes * share)) for k, share in MIX.items()}
    n["users"] = users
    span = f"interval '{days} days'"
    t0 = f"(now() - {span})"
    insert = (
        "INSERT INTO cdc_changelog (source_table, row_key, lsn, op, tx_id, commit_ts, before, after, "
        "kafka_topic, kafka_partition, kafka_offset) "
    )
    tail = " ON CONFLICT DO NOTHING"

    def txn(i: str, commit: str, user: str, amount: str, created: str) -> str:
        return (
            f"jsonb_build_object('txn_id', {i}, 'user_id', {user}, 'product_id', 1 + ({i} * 104729) % {products}, "
            f"'amount', ({amount})::numeric(12,2)::text, 'merchant', 'm', 'created_at', {_iso(created)}, "
            f"'updated_at', {_iso(commit)})"
        )

    def lsn(commit: str, salt: int) -> str:
        return f"(extract(epoch FROM {commit}) * 1000000)::bigint * 8 + {salt}"

    k = n["transactions"]
    c_txn = f"({t0} + (i::float8 / {k}) * {span})"
    created = (
        f"{c_txn} - CASE WHEN i % 20 = 0 THEN ((i * 13) % 29) * interval '1 day' ELSE (i % 5) * interval '1 second' END"
    )
    user = f"1 + (i * 7919) % {users}"
    amount = "1 + ((i * 37) % 50000) / 100.0"
    later = f"LEAST(now(), {c_txn} + ((j * 7) % 4320) * interval '1 minute')"  # up to 3 days later

    def pick(rows: int, of: int) -> str:  # rows changes of rows spread over 1..of
        return f"(SELECT 1 + (j * 2654435761) % {of} AS i, j FROM generate_series(1::bigint, {rows}) j) r"

    sql = [
        "SELECT setseed(0.42)",
        insert + f"SELECT 'transactions', i, {lsn(c_txn, 0)}, 'c', i, {c_txn}, NULL, "
        f"{txn('i', c_txn, user, amount, created)}, 'bench', 0, i FROM generate_series(1::bigint, {k}) i" + tail,
        insert + f"SELECT 'transactions', i, {lsn(later, 1)}, 'u', j, {later}, NULL, "
        f"{txn('i', later, user, '2 + ((j * 53) % 40000) / 100.0', created)}, 'bench', 0, j FROM "
        + pick(n["txn_updates"], k)
        + tail,
        insert + f"SELECT 'transactions', i, {lsn(later, 2)}, 'u', j, {later}, NULL, "
        f"{txn('i', later, f'1 + (j * 31) % {users}', amount, later + ' - make_interval(mins => (j % 90)::int)')}, "
        "'bench', 0, j FROM " + pick(n["txn_moves"], k) + tail,
        insert + f"SELECT 'transactions', i, {lsn(later + ' + make_interval(days => 4)', 3)}, 'd', j, "
        f"{later} + interval '4 days', NULL, NULL, 'bench', 0, j FROM "
        + pick(n["txn_deletes"], k)
        + f" WHERE {later} + interval '4 days' < now()"
        + tail,
    ]
    s = n["sessions"]
    c_ses = f"({t0} + (i::float8 / {s}) * {span})"
    sql.append(
        insert + f"SELECT 'sessions', i, {lsn(c_ses, 4)}, 'c', i, {c_ses}, NULL, jsonb_build_object("
        f"'session_id', i, 'user_id', 1 + (i * 6007) % {users}, 'started_at', {_iso(c_ses)}, "
        f"'duration_s', (i * 17) % 3600), 'bench', 0, i FROM generate_series(1::bigint, {s}) i" + tail
    )
    sql.append(
        insert + f"SELECT 'sessions', i, {lsn(c_ses + ' + make_interval(days => 2)', 5)}, 'd', j, "
        f"{c_ses} + interval '2 days', NULL, NULL, 'bench', 0, j FROM "
        f"{pick(n['session_deletes'], s)} "
        f"WHERE {c_ses} + interval '2 days' < now()" + tail
    )
    v = n["reviews"]
    c_rev = f"({t0} + (i::float8 / {v}) * {span})"

    def review(commit: str, product: str) -> str:
        return (
            f"jsonb_build_object('review_id', i, 'product_id', {product}, 'user_id', 1 + i % {users}, "
            f"'rating', 1 + i % 5, 'created_at', {_iso(c_rev)})"
        )

    sql.append(
        insert + f"SELECT 'reviews', i, {lsn(c_rev, 6)}, 'c', i, {c_rev}, NULL, "
        f"{review(c_rev, f'1 + (i * 7) % {products}')}, 'bench', 0, i "
        f"FROM generate_series(1::bigint, {v}) i" + tail
    )
    sql.append(
        insert + f"SELECT 'reviews', i, {lsn(c_rev + ' + make_interval(hours => 1)', 7)}, 'u', j, "
        f"{c_rev} + interval '1 hour', NULL, {review(c_rev, f'1 + (j * 11) % {products}')}, 'bench', 0, j "
        f"FROM {pick(n['review_moves'], v)} "
        f"WHERE {c_rev} + interval '1 hour' < now()" + tail
    )

    def profile(commit: str, age: str) -> str:
        return (
            f"jsonb_build_object('user_id', i, 'age', {age}, 'income', (20000 + (i * 97) % 80000)::numeric(12,2)"
            f"::text, 'account_status', 'active', 'signup_date', '2024-01-01', 'updated_at', {_iso(commit)})"
        )

    sql.append(
        insert + f"SELECT 'users', i, {lsn(t0, 0)} - {users} + i, 'r', NULL, {t0}, NULL, "
        f"{profile(t0, '18 + i % 60')}, 'bench', 0, i FROM generate_series(1::bigint, {users}) i" + tail
    )
    c_usr = f"({t0} + (j::float8 / {n['user_updates']}) * {span})"
    sql.append(
        insert + f"SELECT 'users', i, {lsn(c_usr, 7)}, 'u', j, {c_usr}, NULL, {profile(c_usr, '19 + j % 60')}, "
        f"'bench', 0, j FROM (SELECT 1 + (j * 7919) % {users} AS i, j FROM "
        f"generate_series(1::bigint, {n['user_updates']}) j) r" + tail
    )
    return sql


def fill(conn, changes: int, users: int, products: int) -> int:
    """Empty the changelog of ``conn``'s database and fill it; return the number of changes written."""
    with conn.cursor() as cur:
        cur.execute(DDL)
        cur.execute("TRUNCATE cdc_changelog")
        for statement in statements(changes, users, products):
            cur.execute(statement)
        cur.execute("ANALYZE cdc_changelog")
        cur.execute("SELECT count(*) FROM cdc_changelog")
        count = cur.fetchone()[0]
    conn.commit()
    return count
