#!/usr/bin/env bash
# Prints the connection string of a PostgreSQL server the project may use,
# finding or starting one:
#   1. DATABASE_URL, when set;
#   2. a server on 127.0.0.1:5432 that lets user postgres in without a password;
#   3. the project's own cluster in .dev/pg (started, or created and started;
#      run as an unprivileged user when this script runs as root);
#   4. otherwise one line saying what to install, and exit 1.
# Set PORTAL_PG_LOCAL=1 to skip step 2 (always use the project's own cluster).
# Progress goes to stderr; only the URL goes to stdout.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "postgres.sh: $*" >&2; }
devdb() { (cd "$root" && go run ./tools/devdb "$@"); }

if [ -n "${DATABASE_URL:-}" ]; then
  echo "$DATABASE_URL"
  exit 0
fi

if [ "${PORTAL_PG_LOCAL:-}" != "1" ] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  url="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
  if devdb check "$url" 2>/dev/null; then
    log "using the PostgreSQL server on 127.0.0.1:5432"
    echo "$url"
    exit 0
  fi
  log "127.0.0.1:5432 does not let user postgres in without a password; starting the project's own cluster instead"
fi

# The project's own cluster. Its port is chosen once per checkout (the first
# free one from 55432) and kept in .dev/pg-port, so two checkouts on one
# machine do not collide.
port_file="$root/.dev/pg-port"
mkdir -p "$root/.dev"
if [ -n "${PORTAL_PG_PORT:-}" ]; then
  port="$PORTAL_PG_PORT"
elif [ -f "$port_file" ]; then
  port="$(cat "$port_file")"
else
  port=55432
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port" > "$port_file"
fi
url="postgres://postgres@127.0.0.1:${port}/postgres?sslmode=disable"

find_bin() {
  local name="$1" dir
  if command -v "$name" >/dev/null 2>&1 && "$name" --version >/dev/null 2>&1; then
    command -v "$name"; return 0
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
  done
  return 1
}

if ! initdb="$(find_bin initdb)" || ! pg_ctl="$(find_bin pg_ctl)"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing PostgreSQL from Debian's packages"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    initdb="$(find_bin initdb)"; pg_ctl="$(find_bin pg_ctl)"
  else
    echo "PostgreSQL not found: install it (sudo apt-get install postgresql) or set DATABASE_URL" >&2
    exit 1
  fi
fi

# PostgreSQL refuses to run as root: use the postgres account (or nobody).
as_user=()
owner="$(id -un)"
if [ "$(id -u)" = 0 ]; then
  owner=postgres
  id postgres >/dev/null 2>&1 || owner=nobody
  as_user=(runuser -u "$owner" --)
fi

base="$root/.dev/pg"
# The server's account must be able to reach the data directory; when the
# checkout lives somewhere it cannot enter (such as /root), use /tmp.
if [ "${#as_user[@]}" -gt 0 ] && ! "${as_user[@]}" test -x "$root/.dev"; then
  base="${TMPDIR:-/tmp}/portal-pg-$(echo "$root" | cksum | cut -d' ' -f1)"
  log "$owner cannot enter $root; keeping the cluster in $base"
fi
data="$base/data"
mkdir -p "$base/run"
if [ "${#as_user[@]}" -gt 0 ]; then chown -R "$owner" "$base"; fi

if [ ! -f "$data/PG_VERSION" ]; then
  log "creating a PostgreSQL cluster in $data"
  "${as_user[@]}" "$initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
fi
if ! "${as_user[@]}" "$pg_ctl" -D "$data" status >/dev/null 2>&1; then
  log "starting PostgreSQL on 127.0.0.1:$port"
  # Development and test data only: durability is traded for speed.
  "${as_user[@]}" "$pg_ctl" -D "$data" -l "$base/postgres.log" -w -t 60 \
    -o "-p $port -k $base/run -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >&2
fi
for _ in $(seq 1 50); do
  if devdb check "$url" 2>/dev/null; then
    echo "$url"
    exit 0
  fi
  sleep 0.2
done
echo "PostgreSQL in $data did not answer on 127.0.0.1:$port; see $base/postgres.log" >&2
exit 1
