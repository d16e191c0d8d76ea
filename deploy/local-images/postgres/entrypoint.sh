#!/bin/sh
# First start on an empty $PGDATA: create the cluster, the user and the database from the environment
# (the upstream image's variables) and run /docker-entrypoint-initdb.d; later starts find the cluster
# on the volume and just run it.
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    user="${POSTGRES_USER:-postgres}"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    db="${POSTGRES_DB:-$user}"
    if [ "$db" != postgres ]; then
        postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE DATABASE "$db" OWNER "$user";
SQL
    fi
    # The upstream image's hook: scripts in /docker-entrypoint-initdb.d run once, against a server
    # that listens on its local socket only (docker-compose.yml's init-databases.sh makes the
    # services' databases and roles there).
    if [ -n "$(ls -A /docker-entrypoint-initdb.d 2>/dev/null)" ]; then
        export POSTGRES_USER="$user" PGHOST=/var/run/postgresql
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$PGHOST" start >/dev/null
        for script in /docker-entrypoint-initdb.d/*; do
            case "$script" in
                *.sh) bash "$script" ;;
                *.sql) psql -v ON_ERROR_STOP=1 --username "$user" --dbname "$db" -f "$script" ;;
            esac
        done
        pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    fi
fi
if [ "${1:-}" = postgres ]; then
    shift
    exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
