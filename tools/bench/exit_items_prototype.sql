-- A prototype, not a migration: what an exit-page x (page | event name) cube would cost and
-- answer, built from the session days' pages and event names (migration 0850) of a bench
-- project's built days. Run against a `make bench-query` stack (its admin URL), under the lock:
--   flock /work/bench.lock psql "$ADMIN_URL" -v project=2 -f tools/bench/exit_items_prototype.sql
-- It creates the table goalchips_proto_exit_items, prints its size and build time and the plan
-- of the Goals card's page-goal query under an exit-page chip, then drops the table.
\timing on
SELECT array_agg(day ORDER BY day) AS days FROM query_rollup_days WHERE project_id = :project AND built_at IS NOT NULL \gset
DROP TABLE IF EXISTS goalchips_proto_exit_items;
CREATE TABLE goalchips_proto_exit_items AS
SELECT sd.project_id, sd.day, sd.exit_page, 'p'::text AS kind, x.value,
       hll_add_agg(hll_hash_text(sd.distinct_id), 12) AS visitors, 0::bigint AS events
FROM query_rollup_session_days sd CROSS JOIN unnest(sd.pages) AS x(value)
WHERE sd.project_id = :project AND sd.day = ANY(:'days'::date[])
GROUP BY 1, 2, 3, 4, 5
UNION ALL
SELECT sd.project_id, sd.day, sd.exit_page, 'e', x.value, hll_add_agg(hll_hash_text(sd.distinct_id), 12), count(*)
FROM query_rollup_session_days sd CROSS JOIN unnest(sd.event_names) AS x(value)
WHERE sd.project_id = :project AND sd.day = ANY(:'days'::date[])
GROUP BY 1, 2, 3, 4, 5;
CREATE INDEX ON goalchips_proto_exit_items (project_id, day, exit_page, kind, value);
ANALYZE goalchips_proto_exit_items;
SELECT count(*) AS rows, count(DISTINCT day) AS days,
       pg_size_pretty(pg_total_relation_size('goalchips_proto_exit_items')) AS size
FROM goalchips_proto_exit_items;
SET enable_hashagg = off;
EXPLAIN (ANALYZE) SELECT value, round(hll_cardinality(hll_union_agg(visitors))) AS visitors
FROM goalchips_proto_exit_items
WHERE project_id = :project AND day = ANY(:'days'::date[]) AND exit_page = ANY('{/pricing}') AND kind = 'p'
  AND value = ANY('{/pricing,/signup,/features,/contact,/docs}')
GROUP BY 1;
DROP TABLE goalchips_proto_exit_items;
