#!/usr/bin/env bash
# make run: the service in development mode on http://localhost:8080, with a
# local PostgreSQL found or started by scripts/postgres.sh, a development KEK
# kept in .dev/kek (so a restart opens the same keys) and the demo enabled.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ -z "${DATABASE_URL:-}" ]; then
  admin="$(scripts/postgres.sh)"
  DATABASE_URL="$(go run ./tools/devdb ensure "$admin" portal_dev)"
fi
export DATABASE_URL
export PORTAL_DEV=true
export PORTAL_DEMO="${PORTAL_DEMO:-true}"
export PORTAL_LISTEN_ADDR="${PORTAL_LISTEN_ADDR:-127.0.0.1:8080}"
port="${PORTAL_LISTEN_ADDR##*:}"
export PORTAL_PUBLIC_URL="${PORTAL_PUBLIC_URL:-http://localhost:$port}"
export PORTAL_DEV_KEK_FILE="${PORTAL_DEV_KEK_FILE:-$root/.dev/kek}"

go build -o .dev/portal ./cmd/portal
cat >&2 <<MSG

  portal (development mode) — open ${PORTAL_PUBLIC_URL}/
  JWKS:  ${PORTAL_PUBLIC_URL}/.well-known/jwks.json
  ready: ${PORTAL_PUBLIC_URL}/readyz
  keys:  DATABASE_URL='${DATABASE_URL}' PORTAL_DEV=true .dev/portal keys list
  Stop with Ctrl-C.

MSG
exec .dev/portal serve
