-- Per account, app, kind and 15-minute UTC bucket of the session start: the source of every
-- usage figure (R8), so reports never scan billing_sessions.
--
-- Why 15 minutes: every UTC offset and DST transition since 2000 falls on a quarter hour, so
-- all instants of a bucket share one local calendar day in every IANA zone, half-hour and
-- 45-minute zones included; a day, week or month in any zone is a sum of whole buckets.
--
-- Why uniqExact states, not counters: a replay can insert the same billing session again
-- under a new insert token. A counter would count it twice; a set of session ids does not,
-- before merges (uniqExactMerge unions the states of all parts) and after them.
CREATE TABLE IF NOT EXISTS {database:Identifier}.usage_15m
(
    account_id String,
    app_id String,
    bucket DateTime('UTC'),
    kind LowCardinality(String),
    sessions AggregateFunction(uniqExact, String),
    conversations AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (account_id, app_id, bucket, kind)
SETTINGS non_replicated_deduplication_window = 10000
