# The two commands of the README: `make run` starts the service with a demo,
# `make test` runs every check. Both find or start PostgreSQL themselves
# (scripts/postgres.sh) when DATABASE_URL is not set.
.PHONY: run test build bench bench-audit soak demo-domain

run:
	@scripts/run.sh

test:
	@scripts/test.sh

# make run against a Koppeltaal domain in a box (needs Node.js 20): the demo
# launches Tasks read from its FHIR server.
demo-domain:
	@scripts/demo-domain.sh

build:
	CGO_ENABLED=0 go build -trimpath -o bin/portal ./cmd/portal

# Measured figures beside same-run baselines; see docs/BENCHMARKS.md.
bench:
	@scripts/bench.sh $(if $(BASELINE),-baseline $(BASELINE)) $(if $(ROUNDS),-rounds $(ROUNDS))

# The audit queries on ROWS generated launches (default 1,000,000): p50/p99
# and plans; the database portal_auditscale_<ROWS> is kept and reused.
ROWS ?= 1000000
bench-audit:
	@scripts/bench-audit.sh -rows $(ROWS)

# Three instances, rotations, a revocation and a database outage under load.
soak:
	@scripts/soak.sh
