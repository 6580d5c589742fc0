#!/usr/bin/env bash
# make soak: three portal instances on one database with rotation timings in
# seconds, launches through all three (plain HTI launches, and Tasks of a
# Koppeltaal test domain with their AuditEvents), an independent verifier, a
# forced rotation, a FHIR outage, a revocation and a database outage
# (tools/soak). PostgreSQL is found or started by scripts/postgres.sh; the
# test domain needs Node.js 20.19 or later and testdomain/node_modules,
# installed here from the lockfile when missing or older.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v node >/dev/null 2>&1 || { echo "soak: Node.js 20.19 or later is needed for the test domain (apt-get install nodejs npm)" >&2; exit 1; }
# npm writes node_modules/.package-lock.json last: an interrupted install
# has none and is done again.
if [ testdomain/package-lock.json -nt testdomain/node_modules/.package-lock.json ]; then
  command -v npm >/dev/null 2>&1 || { echo "soak: npm not found: install Node.js 20.19 or later (the test domain runs testdomain/server.mjs)" >&2; exit 1; }
  (cd testdomain && npm ci --omit=dev --no-audit --no-fund >&2)
  touch testdomain/node_modules/.package-lock.json
fi
PORTAL_SOAK_DATABASE_URL="${PORTAL_SOAK_DATABASE_URL:-$(scripts/postgres.sh)}"
export PORTAL_SOAK_DATABASE_URL
go build -o .dev/soak ./tools/soak
exec .dev/soak "$@"
