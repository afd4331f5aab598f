#!/bin/sh
# The compose `citus` profile's one-shot join: run in a citusdata/citus container after the
# coordinator and the workers accept connections. Idempotent, like `sightline up --citus-workers`
# (services/cli/citus.py), which does the same for a local stack:
#   - the hll extension in every node's database (the rollups' sketches are built on the workers);
#   - the node-to-node password in pg_dist_authinfo on every node (Citus does not sync it);
#   - the coordinator registered, then each worker.
# Sightline's migrations (alembic 0600) then distribute the tables.
set -eu
: "${PGUSER:?}" "${PGPASSWORD:?}" "${PGDATABASE:?}" "${COORDINATOR:?}" "${WORKERS:?}"

psql_on() { psql -h "$1" -v ON_ERROR_STOP=1 -X -q -A -t -c "$2"; }

for node in $COORDINATOR $WORKERS; do
    until pg_isready -h "$node" -q; do sleep 1; done
    psql_on "$node" "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'hll') THEN CREATE EXTENSION hll; END IF; END \$\$"
    psql_on "$node" "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (0, '$PGUSER', 'password=$PGPASSWORD') ON CONFLICT (nodeid, rolename) DO UPDATE SET authinfo = EXCLUDED.authinfo"
done
psql_on "$COORDINATOR" "SELECT citus_set_coordinator_host('$COORDINATOR', 5432)"
for worker in $WORKERS; do
    psql_on "$COORDINATOR" "SELECT citus_add_node('$worker', 5432) WHERE NOT EXISTS (SELECT FROM pg_dist_node WHERE nodename = '$worker')"
done
psql_on "$COORDINATOR" "SELECT nodename || ':' || nodeport FROM pg_dist_node ORDER BY nodeid"
