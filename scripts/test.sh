#!/usr/bin/env bash
# make test: formatting, vet, staticcheck, then every Go test with the race
# detector against a real PostgreSQL (found or started by scripts/postgres.sh;
# each test package creates and drops its own databases there).
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

step "PostgreSQL"
PORTAL_TEST_DATABASE_URL="${PORTAL_TEST_DATABASE_URL:-$(scripts/postgres.sh)}"
export PORTAL_TEST_DATABASE_URL

step "go test -race"
go test -race -count=1 -timeout 20m ./...
