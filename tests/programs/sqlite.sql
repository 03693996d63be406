-- A database workload for make check-programs (tests/programs/run): about
-- a million rows built, indexed, updated, deleted from and queried, with a
-- page cache large enough to keep most of it in the heap; every statement
-- is deterministic, so the output must match a plain run's, and the
-- integrity check must say ok.
PRAGMA cache_size = -262144;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, n INTEGER, v TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)
INSERT INTO t SELECT x, printf('key-%08d', (x * 7919) % 1000003), (x * x) % 1000,
                     printf('%.*c-%d', 40 + x % 200, 'v', x) FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_n ON t(n, id);
UPDATE t SET v = v || '-updated', n = n + 1 WHERE id % 5 = 0;
DELETE FROM t WHERE id % 7 = 0;
CREATE TABLE agg AS SELECT n, count(*) AS c, sum(length(v)) AS l FROM t GROUP BY n;
SELECT count(*), sum(length(v)), total(n), sum(id % 1000) FROM t;
SELECT k, n, length(v) FROM t WHERE k BETWEEN 'key-00500000' AND 'key-00500100' ORDER BY k;
SELECT n, c, l FROM agg ORDER BY l DESC, n LIMIT 10;
SELECT count(*) FROM t a JOIN t b ON b.id = a.id + 1 WHERE a.n = b.n;
PRAGMA integrity_check;
