#!/bin/sh
# Runs once, when the postgres image initialises an empty volume (docker-entrypoint-initdb.d):
# the services' login role, before `sightline migrate` grants it rows (alembic 0600).
# A volume initialised before this script existed: run the same CREATE ROLE once by hand
# (docs/privacy.md, Least privilege).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="${SIGHTLINE_SERVICE_DB_PASSWORD:?SIGHTLINE_SERVICE_DB_PASSWORD is required}" <<'SQL'
CREATE ROLE sightline_service LOGIN PASSWORD :'password';
-- The owner sees the services' sessions in full in pg_stat_activity and may cancel them.
GRANT sightline_service TO sightline;
SQL
