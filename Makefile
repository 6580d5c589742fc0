# The two commands of the README: `make run` starts the service with a demo,
# `make test` runs every check. Both find or start PostgreSQL themselves
# (scripts/postgres.sh) when DATABASE_URL is not set.
.PHONY: run test build bench

run:
	@scripts/run.sh

test:
	@scripts/test.sh

build:
	CGO_ENABLED=0 go build -trimpath -o bin/portal ./cmd/portal

# Measured figures beside same-run baselines; see docs/BENCHMARKS.md.
bench:
	@scripts/bench.sh
