#!/usr/bin/env bash
# First start of the compose Postgres: the same roles, databases and schema as the local stack (ops/stack/*.sql).
# Passwords come from the Docker secret files (CDCF_SECRETS_DIR, /run/secrets), and reach psql escaped, on stdin:
# any password works, quotes, backslashes and spaces included.
set -euo pipefail
secrets=${CDCF_SECRETS_DIR:-/run/secrets}
sql=${CDCF_SQL_DIR:-/cdcf-sql}

# psql's \set 'value': a backslash and a quote are escaped (\\ and ''); a line break cannot be carried
quoted() {
  local value=$1
  if [[ $value == *$'\n'* ]]; then echo "error: a line break in a secret or name: not supported" >&2; exit 1; fi
  value=${value//\\/\\\\}
  printf "'%s'" "${value//\'/\'\'}"
}
secret() {
  local value
  value=$(cat "$secrets/cdcf_$1") || exit 1
  if [ -z "$value" ]; then echo "error: the secret cdcf_$1 is empty" >&2; exit 1; fi
  quoted "$value"
}
# read before anything runs: a secret that is missing or empty stops the script (set -e)
app_password=$(secret app_password)
feast_password=$(secret feast_password)
debezium_password=$(secret debezium_password)
vars() {
  echo "\\set app_user $(quoted "${CDCF_APP_USER:-app}")"
  echo "\\set app_password $app_password"
  echo "\\set feast_user $(quoted "${CDCF_FEAST_USER:-feast}")"
  echo "\\set feast_password $feast_password"
  echo "\\set debezium_user $(quoted "${CDCF_DEBEZIUM_USER:-debezium}")"
  echo "\\set debezium_password $debezium_password"
  echo "\\set app_db $(quoted "${CDCF_APP_DB:-app}")"
  echo "\\set registry_db $(quoted "${CDCF_REGISTRY_DB:-feast_registry}")"
  echo "\\set offline_db $(quoted "${CDCF_OFFLINE_DB:-feast_offline}")"
  echo "\\set publication $(quoted "${CDCF_PUBLICATION:-cdcf_publication}")"
}
{ vars; cat "$sql/roles.sql"; } | psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres
{ vars; echo "SET ROLE :\"app_user\";"; cat "$sql/app_schema.sql"; } \
  | psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "${CDCF_APP_DB:-app}"
