#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback for the multi-worker search tests.
#
#   tests/postgres.sh install                    install Debian's postgresql if no server binaries are found
#   tests/postgres.sh start DIR PORT PASSWORD    install if needed, initialise a cluster in DIR/data, start it on
#                                                127.0.0.1:PORT, create database "optuna" (user postgres/PASSWORD)
#   tests/postgres.sh stop DIR                   stop the server started in DIR
#
# The server runs as the "postgres" system user when this script runs as root (PostgreSQL refuses root),
# otherwise as the calling user. Nothing listens beyond 127.0.0.1.
set -euo pipefail

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
        echo "$d"
    fi
}

install_pg() {
    if [ -n "$(pg_bindir)" ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "postgres.sh: PostgreSQL server binaries not found and not root: install Debian's 'postgresql'" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if [ -z "$(pg_bindir)" ]; then
        echo "postgres.sh: 'postgresql' installed but no /usr/lib/postgresql/*/bin/initdb found" >&2
        return 1
    fi
}

as_owner() {
    # Run a command as the user owning the cluster.
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_pg() {
    local dir=$1 port=$2 password=$3 bin
    install_pg
    bin=$(pg_bindir)
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        chown postgres "$dir"
        chmod 700 "$dir"
    fi
    printf '%s\n' "$password" >"$dir/pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pwfile"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" --auth=scram-sha-256 \
        --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    rm -f "$dir/pwfile"
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off" start >/dev/null; then
        cat "$dir/server.log" >&2 || true
        return 1
    fi
    PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres optuna
    echo "postgresql://postgres:***@127.0.0.1:$port/optuna"
}

stop_pg() {
    local dir=$1 bin
    bin=$(pg_bindir)
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    install) install_pg ;;
    start) [ $# -eq 4 ] || { echo "usage: $0 start DIR PORT PASSWORD" >&2; exit 2; }; start_pg "$2" "$3" "$4" ;;
    stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop_pg "$2" ;;
    *) echo "usage: $0 {install|start DIR PORT PASSWORD|stop DIR}" >&2; exit 2 ;;
esac
