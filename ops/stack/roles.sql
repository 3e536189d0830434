-- Roles and databases of the local stack, run as the postgres superuser. Idempotent; passwords come from
-- settings as psql variables and are (re)set on every run, so secrets.env stays the single truth.
SELECT format('CREATE ROLE %I LOGIN', r) FROM unnest(ARRAY[:'app_user', :'feast_user']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'debezium_user')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'debezium_user') \gexec
ALTER ROLE :"app_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
ALTER ROLE :"feast_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'feast_password';
ALTER ROLE :"debezium_user" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE
    PASSWORD :'debezium_password';

SELECT format('CREATE DATABASE %I OWNER %I', d, o)
FROM (VALUES (:'app_db', :'app_user'), (:'registry_db', :'feast_user'), (:'offline_db', :'feast_user')) AS t(d, o)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \gexec
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"app_db" TO :"debezium_user";
REVOKE ALL ON DATABASE :"registry_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"offline_db" FROM PUBLIC;
