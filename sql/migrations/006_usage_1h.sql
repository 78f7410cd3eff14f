-- The console's hourly rollup: exact usage per account, app, kind and UTC hour, read as counts.
--
-- Why: a 30-day series of a 200-app account is about 700,000 rows of usage_15m; merging their
-- uniqExact states takes hundreds of milliseconds, merging hourly states a quarter of that,
-- and reading cached counts a fraction (the console's target is p99 < 100 ms).
--
-- Exact under replays and voids, as usage_15m is:
--   * usage_1h keeps, per hour, the SET of (session id, 15-minute bucket) pairs: a session
--     inserted twice is one element, and a session a repair moved from one bucket to another
--     within the hour is two elements, of which the void below removes one. voids_1h keeps the
--     voided pairs, a subset of the counted ones (a void names a bucket its session is counted
--     in), so |sessions| - |voided| is exact whatever the order or repetition of inserts.
--   * inserted (rows written, copies included) only ever grows with an insert that reaches the
--     hour and never changes on a merge: it tells whether an hour changed, not how much.
--   * usage_day_counts caches, per app and UTC day, |sessions| - |voided| of each hour and kind
--     (as arrays: one row per app and day, so a month is read without grouping hours) under
--     version = the day's inserted in both tables when it was computed; a cached day is used only
--     while its version still equals them, so any later insert into it (a replay, a late session,
--     a repair, a void) makes the day be computed from its sets again (console/usage_rollup.py).
-- Every offset since 2000 is a multiple of 15 minutes; in the zones whose offset is a whole
-- number of hours every local period is a sum of UTC hours. Other zones read usage_15m.

CREATE TABLE IF NOT EXISTS {database:Identifier}.usage_1h
(
    account_id String,
    app_id String,
    hour DateTime('UTC'),
    kind LowCardinality(String),
    inserted SimpleAggregateFunction(sum, UInt64),
    sessions AggregateFunction(uniqExact, String, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (account_id, app_id, hour, kind)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database:Identifier}.usage_1h_mv
TO {database:Identifier}.usage_1h
AS SELECT
    account_id,
    app_id,
    toStartOfHour(started_at) AS hour,
    kind,
    count() AS inserted,
    uniqExactState(billing_session_id, intDiv(toUnixTimestamp64Milli(started_at), 900000)) AS sessions
FROM {database:Identifier}.billing_sessions
GROUP BY account_id, app_id, hour, kind;

CREATE TABLE IF NOT EXISTS {database:Identifier}.voids_1h
(
    account_id String,
    app_id String,
    hour DateTime('UTC'),
    kind LowCardinality(String),
    inserted SimpleAggregateFunction(sum, UInt64),
    sessions AggregateFunction(uniqExact, String, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (account_id, app_id, hour, kind)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database:Identifier}.voids_1h_mv
TO {database:Identifier}.voids_1h
AS SELECT
    account_id,
    app_id,
    toStartOfHour(started_at) AS hour,
    kind,
    count() AS inserted,
    uniqExactState(billing_session_id, intDiv(toUnixTimestamp64Milli(started_at), 900000)) AS sessions
FROM {database:Identifier}.session_voids
GROUP BY account_id, app_id, hour, kind;

CREATE TABLE IF NOT EXISTS {database:Identifier}.usage_day_counts
(
    account_id String,
    app_id String,
    day Date,
    version UInt64,
    hours Array(DateTime('UTC')),
    kinds Array(LowCardinality(String)),
    sessions Array(Int64),
    computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, app_id, day);

-- What was stored before the views existed (sets: what both wrote counts once).
INSERT INTO {database:Identifier}.usage_1h
SELECT
    account_id,
    app_id,
    toStartOfHour(started_at) AS hour,
    kind,
    count() AS inserted,
    uniqExactState(billing_session_id, intDiv(toUnixTimestamp64Milli(started_at), 900000)) AS sessions
FROM {database:Identifier}.billing_sessions
GROUP BY account_id, app_id, hour, kind;

INSERT INTO {database:Identifier}.voids_1h
SELECT
    account_id,
    app_id,
    toStartOfHour(started_at) AS hour,
    kind,
    count() AS inserted,
    uniqExactState(billing_session_id, intDiv(toUnixTimestamp64Milli(started_at), 900000)) AS sessions
FROM {database:Identifier}.session_voids
GROUP BY account_id, app_id, hour, kind
