#!/usr/bin/env bash
# make bench: builds the portal, starts it against a real PostgreSQL (found or
# started by scripts/postgres.sh) and prints one table of figures, each beside
# a baseline measured in the same run (tools/bench).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PORTAL_BENCH_DATABASE_URL="${PORTAL_BENCH_DATABASE_URL:-$(scripts/postgres.sh)}"
export PORTAL_BENCH_DATABASE_URL
go build -o .dev/bench ./tools/bench
exec .dev/bench "$@"
