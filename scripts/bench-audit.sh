#!/usr/bin/env bash
# make bench-audit: the audit queries on a large generated audit trail
# (tools/auditscale). Finds or starts PostgreSQL through scripts/postgres.sh
# (PORTAL_BENCH_DATABASE_URL), keeps the generated database
# portal_auditscale_<rows> on that server and reuses it on the next run with
# the same row count; prints one plain-text report to stdout, progress to
# stderr. Arguments go to the tool (-rows, -runs, -fresh, ...).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PORTAL_BENCH_DATABASE_URL="${PORTAL_BENCH_DATABASE_URL:-$(scripts/postgres.sh)}"
export PORTAL_BENCH_DATABASE_URL
go build -o .dev/auditscale ./tools/auditscale
exec .dev/auditscale "$@"
