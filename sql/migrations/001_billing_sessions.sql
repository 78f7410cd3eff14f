-- One row per billing session (R5-R7), as the stream emits it on the billing-sessions topic.
--
-- ReplacingMergeTree(inserted_at) keyed by the session id: a replayed session with a new
-- insert token lands as a second row and merges away; until then every reader counts
-- sessions with uniqExact(billing_session_id) or reads with FINAL, never count().
-- non_replicated_deduplication_window keeps the block ids of the last 10000 inserts, so a
-- retried insert carrying the same insert_deduplication_token is dropped, here and in the
-- materialized view below (deduplicate_blocks_in_dependent_materialized_views).
CREATE TABLE IF NOT EXISTS {database:Identifier}.billing_sessions
(
    account_id String,
    app_id String,
    billing_session_id String,
    kind LowCardinality(String),
    channel LowCardinality(Nullable(String)),
    user_id String,
    conversation_id Nullable(String),
    conversation_session_id Nullable(String),
    session_index UInt32,
    started_at DateTime64(3, 'UTC'),
    ended_at DateTime64(3, 'UTC'),
    conversation_started_at Nullable(DateTime64(3, 'UTC')),
    conversation_ended_at Nullable(DateTime64(3, 'UTC')),
    bot_ms Nullable(Int64),
    agent_ms Nullable(Int64),
    alert_id Nullable(String),
    schema_version LowCardinality(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(started_at)
ORDER BY (account_id, app_id, billing_session_id)
SETTINGS non_replicated_deduplication_window = 10000
