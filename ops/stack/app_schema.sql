-- The source database of docs/semantics.md#source, run as the app role (owner). Idempotent.
CREATE TABLE IF NOT EXISTS users (
    user_id BIGINT PRIMARY KEY, age INT, income NUMERIC(12,2), account_status TEXT, signup_date DATE,
    updated_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS products (
    product_id BIGINT PRIMARY KEY, category TEXT, price NUMERIC(12,2), updated_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS transactions (
    txn_id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, product_id BIGINT, amount NUMERIC(12,2) NOT NULL,
    merchant TEXT, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS sessions (
    session_id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, started_at TIMESTAMPTZ NOT NULL,
    duration_s INT NOT NULL);
CREATE TABLE IF NOT EXISTS reviews (
    review_id BIGINT PRIMARY KEY, product_id BIGINT NOT NULL, user_id BIGINT, rating SMALLINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS chargebacks (
    chargeback_id BIGINT PRIMARY KEY, txn_id BIGINT NOT NULL, reported_at TIMESTAMPTZ NOT NULL);
-- Debezium heartbeats write here so the slot advances while the captured tables are quiet.
CREATE TABLE IF NOT EXISTS cdc_heartbeat (id INT PRIMARY KEY, beat_at TIMESTAMPTZ NOT NULL);
-- Debezium incremental-snapshot signals.
CREATE TABLE IF NOT EXISTS debezium_signal (
    id VARCHAR(42) PRIMARY KEY, type VARCHAR(32) NOT NULL, data VARCHAR(2048));

ALTER TABLE users REPLICA IDENTITY FULL;
ALTER TABLE products REPLICA IDENTITY FULL;
ALTER TABLE transactions REPLICA IDENTITY FULL;
ALTER TABLE sessions REPLICA IDENTITY FULL;
ALTER TABLE reviews REPLICA IDENTITY FULL;
ALTER TABLE chargebacks REPLICA IDENTITY FULL;
ALTER TABLE cdc_heartbeat REPLICA IDENTITY FULL;

SELECT format('CREATE PUBLICATION %I FOR TABLE users, products, transactions, sessions, reviews, chargebacks, '
              'cdc_heartbeat', :'publication')
WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') \gexec
-- a publication made before chargebacks existed gets them too
SELECT format('ALTER PUBLICATION %I ADD TABLE chargebacks', :'publication')
WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = :'publication' AND tablename = 'chargebacks')
\gexec

-- Least privilege for the replication role: read the captured tables, beat, read signals.
GRANT USAGE ON SCHEMA public TO :"debezium_user";
GRANT SELECT ON users, products, transactions, sessions, reviews, chargebacks, cdc_heartbeat, debezium_signal
    TO :"debezium_user";
GRANT INSERT, UPDATE ON cdc_heartbeat TO :"debezium_user";
