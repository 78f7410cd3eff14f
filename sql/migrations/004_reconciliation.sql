-- Reconciliation (`metering reconcile --repair`): corrections that are exact, idempotent and audited.
--
-- Missing sessions are inserted into billing_sessions like any other (same ids, so a later
-- stream replay of them counts once), carrying the run that inserted them. Sessions that must
-- not be billed are never deleted: a void is recorded instead, and every usage figure is
-- usage_15m minus voids_15m. Why voids rather than DELETE or a sign column:
--   * usage_15m holds sets of session ids; a set cannot lose a member, but a second set of the
--     voided ids, kept per the same (account, app, 15-minute bucket, kind), can be subtracted.
--     A session is only voided where it is counted (reconcile copies the bucket from the row it
--     read), so per bucket voids_15m is a subset of usage_15m and the difference is exact.
--   * both are sets: a void inserted twice subtracts once, and a voided session inserted again
--     (a stream replay, a reset consumer group) stays voided, because its id is in both sets.
--   * nothing is lost: session_voids says which run voided what, when and why.

-- Which run inserted a session; NULL for what the stream wrote.
ALTER TABLE {database:Identifier}.billing_sessions ADD COLUMN IF NOT EXISTS reconcile_run_id Nullable(String);

-- One row per void written (an audit log: a repeated void adds a row and changes no figure).
-- The columns that place the session (account, app, kind, started_at, conversation session,
-- index) are copied from the billing_sessions row being voided, so the void lands in the
-- bucket that counts it.
CREATE TABLE IF NOT EXISTS {database:Identifier}.session_voids
(
    billing_session_id String,
    account_id String,
    app_id String,
    kind LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    conversation_session_id Nullable(String),
    session_index UInt32,
    reconcile_run_id String,
    reason String,
    voided_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (account_id, app_id, billing_session_id, started_at)
SETTINGS non_replicated_deduplication_window = 10000;

-- The voided ids and voided conversation sessions per usage_15m key: subtracted from usage_15m.
CREATE TABLE IF NOT EXISTS {database:Identifier}.voids_15m
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
SETTINGS non_replicated_deduplication_window = 10000;

-- Same expressions as usage_15m_mv: a voided index-0 usage or voice session takes its
-- conversation session out of `conversations` too.
CREATE MATERIALIZED VIEW IF NOT EXISTS {database:Identifier}.voids_15m_mv
TO {database:Identifier}.voids_15m
AS SELECT
    account_id,
    app_id,
    toStartOfFifteenMinutes(started_at) AS bucket,
    kind,
    uniqExactState(billing_session_id) AS sessions,
    uniqExactStateIf(
        ifNull(conversation_session_id, ''),
        session_index = 0 AND kind IN ('usage', 'voice') AND conversation_session_id IS NOT NULL
    ) AS conversations
FROM {database:Identifier}.session_voids
GROUP BY account_id, app_id, bucket, kind;

-- The audit trail of repair runs: who ran it where, on what, and what it changed. A run is
-- written when it starts (status running) and again when it ends (done or failed); the latest
-- row of a run id is its state, so a run that died half-way stays visible as running.
CREATE TABLE IF NOT EXISTS {database:Identifier}.reconcile_runs
(
    run_id String,
    period_from Date,
    period_to Date,
    timezone String,
    source String,
    status LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    finished_at Nullable(DateTime64(3, 'UTC')),
    missing UInt64,
    extra UInt64,
    unrepairable UInt64,
    inserted UInt64,
    voided UInt64,
    os_user String,
    host String,
    detail String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY run_id
