#!/usr/bin/env bash
# make soak: three portal instances on one database with rotation timings in
# seconds, launches through all three, an independent verifier, a forced
# rotation, a revocation and a database outage midway (tools/soak).
# PostgreSQL is found or started by scripts/postgres.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PORTAL_SOAK_DATABASE_URL="${PORTAL_SOAK_DATABASE_URL:-$(scripts/postgres.sh)}"
export PORTAL_SOAK_DATABASE_URL
go build -o .dev/soak ./tools/soak
exec .dev/soak "$@"
