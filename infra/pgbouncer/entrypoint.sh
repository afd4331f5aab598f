#!/bin/sh
# Renders pgbouncer.ini and userlist.txt from the templates and environment, then runs
# PgBouncer in the foreground.
set -eu
export database="${DATABASE:-sightline}"
export user="${DB_USER:-sightline}"
export password="${DB_PASSWORD:?DB_PASSWORD is required}"
export postgres_host="${POSTGRES_HOST:-postgres}"
export postgres_port="${POSTGRES_PORT:-5432}"
export listen_addr="0.0.0.0"
export listen_port="${LISTEN_PORT:-6432}"
export pool_size="${POOL_SIZE:-30}"
export max_client_conn="${MAX_CLIENT_CONN:-10000}"
export max_db_connections="$((pool_size + 5))"
export run_dir=/tmp
# Empty: in the foreground PgBouncer logs to stderr, which the container runtime collects.
export log_file=""
conf_dir=/tmp/pgbouncer
mkdir -p "$conf_dir"
umask 077
export auth_file="$conf_dir/userlist.txt"
envsubst < /etc/sightline/userlist.txt.template > "$auth_file"
envsubst < /etc/sightline/pgbouncer.ini.template > "$conf_dir/pgbouncer.ini"
exec pgbouncer "$conf_dir/pgbouncer.ini"
