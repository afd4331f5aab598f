"""The services' role: reads and writes rows, owns nothing, runs no DDL.

The services (ingest, query, replay: one role for all three) connect through PgBouncer as
``sightline_service``. The migrating role (the owner, ``sightline``) keeps every table and
everything that needs an owner: migrations, retention's DROP of expired partitions, creating
daily partitions, ``sightline project ...`` (docs/privacy.md "Least privilege").

- ``projects``: SELECT only (keys and domains are changed by the admin commands alone);
- every other application table: SELECT, INSERT, UPDATE, DELETE (ingest writes events and
  recordings, the query refresher writes rollups, erasure deletes all of them);
- ``alembic_version``: nothing;
- default privileges: tables the owner creates later in ``public`` (each day's
  ``events_pYYYYMMDD`` partition, a later migration's table) get the same DML grants. Rows
  reach a partition through ``events`` anyway (Postgres checks the table a statement names);
  the default grant keeps a direct read of a partition working too. A later migration whose
  table the services must not write revokes that table's grant itself;
- TEMPORARY on the database is taken from PUBLIC, so the services cannot create even a
  temporary table (the owner, as the database's owner, still can).

The role is a cluster object, with a password that is the deployment's business:
``sightline up`` and the test harness create it as the cluster's superuser, with its own
password, before migrating; compose's Postgres image creates it on first start
(infra/postgres/service-role.sh). If it is missing, this migration creates it (without LOGIN)
when the migrating role may create roles, and otherwise stops with a message saying how.

Revision ID: 0600
Revises: 0500
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0600"
down_revision: str | None = "0500"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERVICE_ROLE = "sightline_service"
READ_ONLY_TABLES = ("projects",)
READ_WRITE_TABLES = (
    "events",
    "ingested_events",
    "replay_sessions",
    "replay_chunks",
    "query_rollup_days",
    "query_rollup_visits",
    "query_rollup_pages",
    "query_rollup_weeks",
    "query_rollup_page_weeks",
)
DML = "SELECT, INSERT, UPDATE, DELETE"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SERVICE_ROLE}') THEN
                IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
                    RAISE EXCEPTION 'role {SERVICE_ROLE} does not exist and % may not create it', current_user
                        USING HINT = 'as a superuser: CREATE ROLE {SERVICE_ROLE} LOGIN PASSWORD ''...''; '
                                     'then migrate again (docs/privacy.md, Least privilege)';
                END IF;
                CREATE ROLE {SERVICE_ROLE} NOLOGIN;
            END IF;
        END
        $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {SERVICE_ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(READ_ONLY_TABLES)} TO {SERVICE_ROLE}")
    op.execute(f"GRANT {DML} ON {', '.join(READ_WRITE_TABLES)} TO {SERVICE_ROLE}")
    # Tables and sequences the owner (the role running this) creates from now on.
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {DML} ON TABLES TO {SERVICE_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {SERVICE_ROLE}")
    # Partitions made before this migration (by `sightline migrate` or the ingest service).
    op.execute(
        f"""
        DO $$
        DECLARE partition_name text;
        BEGIN
            FOR partition_name IN
                SELECT child.relname FROM pg_inherits
                JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
                JOIN pg_class child ON child.oid = pg_inherits.inhrelid
                WHERE parent.relname = 'events' AND parent.relnamespace = 'public'::regnamespace
            LOOP
                EXECUTE format('GRANT {DML} ON %I TO {SERVICE_ROLE}', partition_name);
            END LOOP;
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
        END
        $$
        """
    )


def downgrade() -> None:
    # The role itself stays: it is a cluster object the deployment may have made, and other
    # databases of the cluster (a second Sightline, a test's scratch database) may use it.
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database());
        END
        $$
        """
    )
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {SERVICE_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE {DML} ON TABLES FROM {SERVICE_ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {SERVICE_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {SERVICE_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {SERVICE_ROLE}")
