-- The server's clock in nanoseconds: the version of a usage_counts recount (consumers/clickhouse/counts.py),
-- read in a statement of its own, after the writes being counted and before the recount reads them.
SELECT toUnixTimestamp64Nano(now64(9))
