-- Orders and invoices, as the order processor publishes them on billing-orders (docs/orders.md).
--
-- orders: one row per state of an order (order_state records), the latest by version wins
-- (ReplacingMergeTree(version), read with FINAL): a replay inserts the same versions again.
-- invoices: one row per issued document (invoice_issued records: invoices and credit notes),
-- keyed by account and number; a document never changes once issued, so every copy is the same.

CREATE TABLE IF NOT EXISTS {database:Identifier}.orders
(
    account_id String,
    order_id String,
    app_id String,
    description String,
    amount Decimal(21, 6),
    currency LowCardinality(String),
    payment_method String,
    payment_status LowCardinality(String),
    provider LowCardinality(String),
    provider_reference Nullable(String),
    failure_reason Nullable(String),
    billing_date Nullable(Date),
    invoice_id Nullable(String),
    credit_note_id Nullable(String),
    requested_by Nullable(String),
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    version UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account_id, order_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {database:Identifier}.invoices
(
    account_id String,
    invoice_id String,
    number UInt64,
    kind LowCardinality(String),
    order_id String,
    app_id String,
    issued_at DateTime64(3, 'UTC'),
    billing_date Date,
    currency LowCardinality(String),
    total Decimal(21, 6),
    document String,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (account_id, invoice_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Idempotency-Key of the console's mutating routes: the first answer per (account, route, key),
-- kept at least 24 h (TTL 2 days). A retry with the same body gets that answer again; another
-- body is a 409. Several rows for one key (two replicas racing) are read oldest first.
CREATE TABLE IF NOT EXISTS {database:Identifier}.idempotency_keys
(
    account_id String,
    route String,
    key String,
    body_sha256 String,
    status UInt16,
    response String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (account_id, route, key, created_at)
TTL toDateTime(created_at) + INTERVAL 2 DAY
