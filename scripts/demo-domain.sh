#!/usr/bin/env bash
# make demo-domain: `make run` against a Koppeltaal domain in a box. It
# starts the test domain (testdomain/, Node 20: a validating FHIR R4 server
# and a SMART backend-services token endpoint) seeded by cmd/testdomain
# with a demo module, patient, practitioner, relative, CareTeam and Tasks,
# and runs the portal with its default issuer joined to that domain, so the
# demo's buttons launch Tasks read from FHIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

command -v node >/dev/null 2>&1 || { echo "demo-domain: Node.js 20 or later is needed (apt-get install nodejs npm)" >&2; exit 1; }
if [ ! -d testdomain/node_modules ] || [ testdomain/package-lock.json -nt testdomain/node_modules ]; then
  (cd testdomain && npm ci --no-audit --no-fund --loglevel=error)
fi

export PORTAL_LISTEN_ADDR="${PORTAL_LISTEN_ADDR:-127.0.0.1:8080}"
port="${PORTAL_LISTEN_ADDR##*:}"
export PORTAL_PUBLIC_URL="${PORTAL_PUBLIC_URL:-http://localhost:$port}"
export PORTAL_CLIENT_ID="${PORTAL_CLIENT_ID:-portal-dev}"
issuer="${PORTAL_DEFAULT_ISSUER:-default}"

mkdir -p .dev
envfile=.dev/testdomain.env
rm -f "$envfile"
go build -o .dev/testdomain ./cmd/testdomain
# The domain stops when its stdin closes: keep it open for as long as this
# script runs, and stop it when the script ends.
.dev/testdomain -client-id "$PORTAL_CLIENT_ID" -jwks-url "$PORTAL_PUBLIC_URL/issuers/$issuer/jwks.json" \
  -module-launch-url "$PORTAL_PUBLIC_URL/demo/module/launch" -env-file "$envfile" < <(while sleep 3600; do :; done) &
domain=$!
trap 'kill "$domain" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  [ -s "$envfile" ] && break
  kill -0 "$domain" 2>/dev/null || { echo "demo-domain: the test domain did not start" >&2; exit 1; }
  sleep 0.1
done
[ -s "$envfile" ] || { echo "demo-domain: the test domain did not report its settings within 60 s" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a
cat >&2 <<MSG

  Koppeltaal test domain: FHIR ${PORTAL_FHIR_BASE_URL}
  the portal's Device there: ${PORTAL_DEVICE}; its Tasks: ${DEMO_TASKS}
  Each demo button launches a Task read from the domain; try a refusal:
    a practitioner not in the CareTeam, or the completed Task, through the API
    (README, "Joining a Koppeltaal domain").
MSG
scripts/run.sh
