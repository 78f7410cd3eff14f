-- Plans, funds, agent seats (R11, R12), the human agents at work (R11) and the balances the
-- balance processor publishes, so `metering usage` and `metering plans` can read them.
--
-- Every row has a deterministic key and every table drops what a replay inserts again:
--   * the sink inserts each Kafka offset range with the same insert_deduplication_token, so a
--     retried block is dropped (non_replicated_deduplication_window);
--   * a replay under another token (a reset consumer group) lands as a second row with the same
--     key, merged away by ReplacingMergeTree; until then readers use FINAL or argMax, or count
--     sets (uniqExact), never count().
-- The input events are deduplicated as R1 says: by (app_id, event_id).

-- R12 plan history: one row per plan_changed event. Money is Decimal(21, 6): the contract's
-- decimal strings have at most 15 integer and 6 fraction digits, so nothing is rounded.
CREATE TABLE IF NOT EXISTS {database:Identifier}.plan_changes
(
    account_id String,
    app_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    plan String,
    price_per_usage_session Decimal(21, 6),
    price_per_alert_session Decimal(21, 6),
    price_per_voice_session Decimal(21, 6),
    currency LowCardinality(String),
    low_balance_threshold Decimal(21, 6),
    idle_timeout_minutes Nullable(UInt32),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (app_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- R12 funding history: one row per funds_added event.
CREATE TABLE IF NOT EXISTS {database:Identifier}.funds_added
(
    account_id String,
    app_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    amount Decimal(21, 6),
    currency LowCardinality(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (app_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- R11 seat history: one row per agents_subscribed event (the count in force from occurred_at
-- on). Seats per day are derived at read time in the reporting zone, by the same code as
-- `metering compute` (pipeline.balance.agents.SeatTimeline): the changes are few per app.
CREATE TABLE IF NOT EXISTS {database:Identifier}.agent_subscriptions
(
    account_id String,
    app_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    agents UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (app_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- R11 active agents: the started transfers that name an agent, nothing else of the
-- agent-transfers topic. Active agents of a period are uniqExact(agent_id) over the rows whose
-- occurred_at falls in it (in the reporting zone): a set, so copies change nothing even before
-- the merge.
CREATE TABLE IF NOT EXISTS {database:Identifier}.agent_transfers_started
(
    account_id String,
    app_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    agent_id String,
    conversation_id String,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, app_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The balance read model (the compacted balance-state topic): the latest snapshot per app wins
-- by version, which the balance processor increases with every change it applies. Money is kept
-- as the decimal strings it wrote (shown as written) and as Decimal(38, 6) (for sums and sorting).
CREATE TABLE IF NOT EXISTS {database:Identifier}.balance_snapshots
(
    account_id String,
    app_id String,
    plan Nullable(String),
    currency LowCardinality(String),
    funds String,
    usage_cost String,
    alert_cost String,
    voice_cost String,
    usage_sessions UInt64,
    alert_sessions UInt64,
    voice_sessions UInt64,
    unpriced_sessions UInt64,
    balance String,
    balance_amount Decimal(38, 6),
    threshold String,
    status LowCardinality(String),
    entitled Bool,
    agents UInt32,
    version UInt64,
    updated_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY app_id
SETTINGS non_replicated_deduplication_window = 10000
