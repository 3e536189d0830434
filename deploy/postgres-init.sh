#!/usr/bin/env bash
# First start of the compose Postgres: the same roles, databases and schema as the local stack (cdcf/stack/*.sql).
set -euo pipefail
vars() {
  cat <<SQL
\set app_user '${CDCF_APP_USER:-app}'
\set app_password '${CDCF_APP_PASSWORD}'
\set feast_user '${CDCF_FEAST_USER:-feast}'
\set feast_password '${CDCF_FEAST_PASSWORD}'
\set debezium_user '${CDCF_DEBEZIUM_USER:-debezium}'
\set debezium_password '${CDCF_DEBEZIUM_PASSWORD}'
\set app_db '${CDCF_APP_DB:-app}'
\set registry_db '${CDCF_REGISTRY_DB:-feast_registry}'
\set offline_db '${CDCF_OFFLINE_DB:-feast_offline}'
\set publication '${CDCF_PUBLICATION:-cdcf_publication}'
SQL
}
{ vars; cat /cdcf-sql/roles.sql; } | psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres
{ vars; echo "SET ROLE \"${CDCF_APP_USER:-app}\";"; cat /cdcf-sql/app_schema.sql; } \
  | psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "${CDCF_APP_DB:-app}"
