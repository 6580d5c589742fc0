#!/usr/bin/env bash
# deploy/check.sh: checks the Prometheus alerting rules with promtool
# (promtool check rules, then the unit tests of alerts_test.yml). It uses
# PORTAL_PROMTOOL, the promtool on PATH, or .dev/promtool, which it takes
# out of Debian's prometheus package (apt-get download, dpkg-deb -x) without
# installing the package, so no Prometheus service is enabled or started.
# scripts/test.sh runs it; it also runs alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

promtool="${PORTAL_PROMTOOL:-}"
local_promtool="$root/.dev/promtool"
if [ -z "$promtool" ] && ! promtool="$(command -v promtool)"; then
  if [ -x "$local_promtool" ]; then
    promtool="$local_promtool"
  elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    # Take promtool out of Debian's prometheus package without installing
    # the package: no service is enabled or started, nothing is left on
    # the machine but .dev/promtool (git-ignored).
    echo "fetching promtool from Debian's prometheus package into .dev/" >&2
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 || true; fi
    (cd "$work" && apt-get download -qq prometheus >&2) || {
      echo "promtool not found and Debian's prometheus package could not be downloaded: install it (sudo apt-get install prometheus) or set PORTAL_PROMTOOL" >&2
      exit 1
    }
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p "$root/.dev"
    install -m 755 "$work/x/usr/bin/promtool" "$local_promtool"
    promtool="$local_promtool"
  else
    echo "promtool not found: install it (sudo apt-get install prometheus, or a Prometheus release's promtool) or set PORTAL_PROMTOOL" >&2
    exit 1
  fi
fi

"$promtool" --version 2>&1 | head -1 >&2
"$promtool" check rules deploy/prometheus/alerts.yml
# promtool resolves rule_files relative to the test file.
"$promtool" test rules deploy/prometheus/alerts_test.yml
