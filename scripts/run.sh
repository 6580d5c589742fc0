#!/usr/bin/env bash
# make run: the service in development mode on http://localhost:8080, with a
# local PostgreSQL found or started by scripts/postgres.sh, a development KEK
# kept in .dev/kek (so a restart opens the same keys) and the demo enabled.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export PORTAL_DEV_KEK_FILE="${PORTAL_DEV_KEK_FILE:-$root/.dev/kek}"
if [ -z "${DATABASE_URL:-}" ]; then
  admin="$(scripts/postgres.sh)"
  # One development database per checkout. Its keys are sealed under the
  # development KEK in .dev/kek: without that file they cannot be opened, so
  # the database starts afresh.
  db="portal_dev_$(printf %s "$root" | cksum | cut -d' ' -f1)"
  if [ -f "$PORTAL_DEV_KEK_FILE" ]; then
    DATABASE_URL="$(go run ./tools/devdb ensure "$admin" "$db")"
  else
    echo "run.sh: no development KEK yet ($PORTAL_DEV_KEK_FILE): starting with a fresh database $db" >&2
    DATABASE_URL="$(go run ./tools/devdb reset "$admin" "$db")"
  fi
fi
export DATABASE_URL
export PORTAL_DEV=true
export PORTAL_DEMO="${PORTAL_DEMO:-true}"
export PORTAL_LISTEN_ADDR="${PORTAL_LISTEN_ADDR:-127.0.0.1:8080}"
port="${PORTAL_LISTEN_ADDR##*:}"
export PORTAL_PUBLIC_URL="${PORTAL_PUBLIC_URL:-http://localhost:$port}"

go build -o .dev/portal ./cmd/portal
cat >&2 <<MSG

  portal (development mode) — open ${PORTAL_PUBLIC_URL}/
  JWKS:  ${PORTAL_PUBLIC_URL}/.well-known/jwks.json
  ready: ${PORTAL_PUBLIC_URL}/readyz
  keys:  DATABASE_URL='${DATABASE_URL}' PORTAL_DEV=true .dev/portal keys list
  Stop with Ctrl-C.

MSG
exec .dev/portal serve
