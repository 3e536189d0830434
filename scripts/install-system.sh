#!/usr/bin/env bash
# Installs the Debian packages the local stack needs, only those missing. Idempotent; needs root for apt.
set -euo pipefail

need=()
command -v pg_ctlcluster >/dev/null 2>&1 && [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)  # javac builds the window engine
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the stack's TLS certificates
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the test that loads `feast ui` in a browser

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${need[*]}; run 'sudo make install' (apt-get install ${need[*]})." >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged services; the stack runs its own PostgreSQL cluster and Redis process instead.
if command -v service >/dev/null 2>&1; then
  for packaged in redis-server prometheus prometheus-alertmanager; do
    service "$packaged" stop >/dev/null 2>&1 || true
  done
fi
