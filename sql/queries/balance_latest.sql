-- The latest balance snapshot of every app (the highest version: ReplacingMergeTree(version) and
-- FINAL, exact before any merge), for `metering plans`.
--
-- Parameters: database Identifier; account Nullable(String) (NULL: all).
SELECT
    account_id,
    app_id,
    plan,
    currency,
    status,
    balance,
    threshold,
    entitled
FROM {database:Identifier}.balance_snapshots FINAL
WHERE {account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)})
ORDER BY account_id, app_id
