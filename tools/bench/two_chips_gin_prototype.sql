-- A prototype, not a migration: whether intersecting two visit chips in one GIN index (the
-- visit values as keys) makes the Goals card's page-goal query under two visit chips faster
-- than 0920's per-column indexes. Run against a bench stack with 0920 (its admin URL):
--   psql "$ADMIN_URL" -f tools/bench/two_chips_gin_prototype.sql
-- Project 2, goals and chips (country DE, device mobile) as tools.bench.query's shape. It builds
-- the index, plans the query with it, times it alternately with (:q) and without the GIN
-- condition (:q0, the branch's query), then drops the index. Timed runs belong under the lock.
\timing on
SELECT array_agg(day ORDER BY day) AS days FROM query_rollup_days WHERE project_id = 2 AND built_at IS NOT NULL \gset
CREATE INDEX tc_visit_gin ON query_rollup_session_days USING gin ((ARRAY['c:' || country, 'd:' || device, 'b:' || browser, 'o:' || os, 'r:' || referrer, 's:' || utm_source, 'm:' || utm_medium, 'n:' || utm_campaign]));
ANALYZE query_rollup_session_days;
SELECT pg_size_pretty(pg_relation_size('tc_visit_gin'));
\set q 'SELECT d0, count(*) AS visitors, count(*) OVER () AS total_rows FROM (SELECT DISTINCT page AS d0, distinct_id FROM (SELECT sd.distinct_id, sd.exit_page, sd.country, sd.device, x.value AS page FROM query_rollup_session_days sd CROSS JOIN unnest(CAST(\'{/pricing,/signup,/features,/contact,/docs}\' AS text[])) AS x(value) WHERE sd.project_id=2 AND sd.day = ANY(:\'days\'::date[]) AND x.value = ANY(sd.pages) AND (ARRAY[\'c:\' || country, \'d:\' || device, \'b:\' || browser, \'o:\' || os, \'r:\' || referrer, \'s:\' || utm_source, \'m:\' || utm_medium, \'n:\' || utm_campaign]) @> ARRAY[\'c:DE\', \'d:mobile\']) u WHERE country = ANY(\'{DE}\') AND device = ANY(\'{mobile}\')) g GROUP BY d0 ORDER BY visitors DESC, d0 LIMIT 100'
\set q0 'SELECT d0, count(*) AS visitors, count(*) OVER () AS total_rows FROM (SELECT DISTINCT page AS d0, distinct_id FROM (SELECT sd.distinct_id, sd.exit_page, sd.country, sd.device, x.value AS page FROM query_rollup_session_days sd CROSS JOIN unnest(CAST(\'{/pricing,/signup,/features,/contact,/docs}\' AS text[])) AS x(value) WHERE sd.project_id=2 AND sd.day = ANY(:\'days\'::date[]) AND x.value = ANY(sd.pages)) u WHERE country = ANY(\'{DE}\') AND device = ANY(\'{mobile}\')) g GROUP BY d0 ORDER BY visitors DESC, d0 LIMIT 100'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) :q;
:q0;
:q;
:q0;
:q;
:q0;
:q;
DROP INDEX tc_visit_gin;
