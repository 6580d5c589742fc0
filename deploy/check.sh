#!/usr/bin/env bash
# deploy/check.sh: checks the Prometheus alerting rules with promtool
# (promtool check rules, then the unit tests of alerts_test.yml). It uses
# PORTAL_PROMTOOL or the promtool on PATH; as root with apt-get it installs
# Debian's prometheus package (which ships promtool) without starting its
# service. scripts/test.sh runs it; it also runs alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

promtool="${PORTAL_PROMTOOL:-}"
if [ -z "$promtool" ] && ! promtool="$(command -v promtool)"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's prometheus package (for promtool)" >&2
    # Keep the package from starting a Prometheus on :9090: invoke-rc.d asks
    # policy-rc.d, and 101 means "do not start". An existing policy is kept.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      made_policy=1
    fi
    status=0
    {
      apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    } >&2 || status=$?
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
    [ "$status" = 0 ] || { echo "apt-get install prometheus failed ($status)" >&2; exit 1; }
    promtool="$(command -v promtool)" || { echo "Debian's prometheus package installed no promtool" >&2; exit 1; }
  else
    echo "promtool not found: install it (sudo apt-get install prometheus, or a Prometheus release's promtool) or set PORTAL_PROMTOOL" >&2
    exit 1
  fi
fi

"$promtool" --version 2>&1 | head -1 >&2
"$promtool" check rules deploy/prometheus/alerts.yml
# promtool resolves rule_files relative to the test file.
"$promtool" test rules deploy/prometheus/alerts_test.yml
