-- The plan model behind the console's Plan & usage page (docs/balances.md): scheduled plans and
-- terms on plan_changes, the balance processor's view of each app (owner, term end, a change still
-- to come, a pending extension request) on balance_snapshots, and the new billing-plans and
-- billing-accounts events. Same rules as migration 005: deterministic keys, ReplacingMergeTree,
-- readers use FINAL or argMax; inserts carry the sink's deduplication token.

ALTER TABLE {database:Identifier}.plan_changes
    ADD COLUMN IF NOT EXISTS effective_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS term_months Nullable(UInt16);

ALTER TABLE {database:Identifier}.balance_snapshots
    ADD COLUMN IF NOT EXISTS expires_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS expired Bool DEFAULT false,
    ADD COLUMN IF NOT EXISTS scheduled_plan Nullable(String),
    ADD COLUMN IF NOT EXISTS scheduled_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS owner Nullable(String),
    ADD COLUMN IF NOT EXISTS extension_request_id Nullable(String),
    ADD COLUMN IF NOT EXISTS extension_days Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS extension_reason Nullable(String),
    ADD COLUMN IF NOT EXISTS extension_requested_at Nullable(DateTime64(3, 'UTC'));

-- Money paid back (a refunded order), as funds_added: one row per funds_refunded event.
CREATE TABLE IF NOT EXISTS {database:Identifier}.funds_refunded
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

-- Extension requests and the operators' decisions (extension_requested, extension_granted,
-- extension_declined): `metering plans extend|decline` finds a request here by its id.
CREATE TABLE IF NOT EXISTS {database:Identifier}.extension_events
(
    account_id String,
    app_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    type LowCardinality(String),
    request_id String,
    days Nullable(UInt32),
    reason Nullable(String),
    user_id Nullable(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (app_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Owner changes (owner_changed): the history behind balance_snapshots.owner.
CREATE TABLE IF NOT EXISTS {database:Identifier}.owner_changes
(
    account_id String,
    app_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    user_id String,
    changed_by Nullable(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (app_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Billing type per account (account_changed on billing-accounts), deduplicated by account and
-- event_id; the latest by (occurred_at, event_id) is in force; no row: prepaid.
CREATE TABLE IF NOT EXISTS {database:Identifier}.billing_accounts
(
    account_id String,
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    billing_type LowCardinality(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (account_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000
