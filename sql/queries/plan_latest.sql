-- The latest plan of every app, as R12 orders plans: by occurred_at, then event_id (of two plans
-- stamped with the same millisecond, the greater event_id is in force). Copies do not matter to
-- argMax. For `metering plans`, for apps the balance processor has not published yet.
--
-- Parameters: database Identifier; account Nullable(String) (NULL: all).
SELECT
    account_id,
    app_id,
    argMax(plan, (occurred_at, event_id)) AS plan,
    argMax(currency, (occurred_at, event_id)) AS currency,
    argMax(low_balance_threshold, (occurred_at, event_id)) AS threshold
FROM {database:Identifier}.plan_changes
WHERE {account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)})
GROUP BY account_id, app_id
ORDER BY account_id, app_id
