#!/usr/bin/env bash
# make test: formatting, vet, staticcheck, the test domain's node_modules
# (npm ci in testdomain/), the alerting rules (promtool), then
# every Go test with the race detector against a real PostgreSQL (found or
# started by scripts/postgres.sh; each test package creates and drops its own
# databases there).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
step() { printf '\n== %s\n' "$*" >&2; }

step "gofmt"
unformatted="$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.dev/*'))"
if [ -n "$unformatted" ]; then
  echo "gofmt: these files need formatting:" >&2
  echo "$unformatted" >&2
  exit 1
fi

step "go vet"
go vet ./...

step "staticcheck"
go tool staticcheck ./...

step "Chromium (the launch page is tested in a real browser)"
if [ -z "${PORTAL_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  else
    echo "Chromium not found: install it (sudo apt-get install chromium) or set PORTAL_CHROMIUM; the browser tests fail without it" >&2
    exit 1
  fi
fi
${PORTAL_CHROMIUM:-chromium} --version >&2

step "test domain (testdomain/: npm ci from the lockfile when node_modules is missing or older)"
# npm writes node_modules/.package-lock.json last: an interrupted install
# has none and is done again.
if [ testdomain/package-lock.json -nt testdomain/node_modules/.package-lock.json ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js 20.19 or later (internal/testdomain runs testdomain/server.mjs)" >&2; exit 1; }
  (cd testdomain && npm ci --omit=dev --no-audit --no-fund >&2)
  touch testdomain/node_modules/.package-lock.json
fi

step "Prometheus alerting rules (promtool check rules, test rules)"
deploy/check.sh

step "PostgreSQL"
PORTAL_TEST_DATABASE_URL="${PORTAL_TEST_DATABASE_URL:-$(scripts/postgres.sh)}"
export PORTAL_TEST_DATABASE_URL

step "go test -race"
go test -race -count=1 -timeout 20m ./...

step "fuzzing (each target ${PORTAL_FUZZTIME:-10s})"
for target in "FuzzDecodeRequest ./internal/server" "FuzzVerify ./pkg/hti" "FuzzParseClaims ./pkg/hti"; do
  set -- $target
  # go test passes when -fuzz matches nothing: make sure the target exists.
  listed="$(go test -list "^$1\$" "$2")"
  grep -qx "$1" <<<"$listed" || { echo "fuzz target $1 not found in $2" >&2; exit 1; }
  # Go 1.26's fuzz coordinator sometimes ends a run that found nothing with
  # "context deadline exceeded" right at the -fuzztime boundary, a race in
  # its shutdown (go.dev/issue/75804, fixed in Go 1.27). Such a run wrote no
  # failing input; it is run once more. A real failure writes its input to
  # testdata and is never retried.
  out="$(mktemp)"
  if ! go test -run '^$' -fuzz "^$1\$" -fuzztime "${PORTAL_FUZZTIME:-10s}" "$2" 2>&1 | tee "$out"; then
    if grep -q "context deadline exceeded" "$out" && ! grep -q "Failing input written" "$out"; then
      echo "fuzz target $1 stopped on the fuzzer's own deadline, with no failing input: running it once more" >&2
      go test -run '^$' -fuzz "^$1\$" -fuzztime "${PORTAL_FUZZTIME:-10s}" "$2"
    else
      rm -f "$out"; exit 1
    fi
  fi
  rm -f "$out"
done

step "soak, short (make soak runs the long one)"
PORTAL_SOAK_DATABASE_URL="$PORTAL_TEST_DATABASE_URL" scripts/soak.sh -duration "${PORTAL_SOAK_DURATION:-24s}"
