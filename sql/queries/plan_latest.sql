-- The plan in force now of every app, as R12 orders plans: by effective_at (default occurred_at),
-- then event_id (of two plans taking effect at the same millisecond, the greater event_id is in
-- force); plans scheduled for later are not in force yet. Copies do not matter to argMax. For
-- `metering plans`, for apps the balance processor has not published yet.
--
-- Parameters: database Identifier; account Nullable(String) (NULL: all).
SELECT
    account_id,
    app_id,
    argMax(plan, (coalesce(effective_at, occurred_at), event_id)) AS plan,
    argMax(currency, (coalesce(effective_at, occurred_at), event_id)) AS currency,
    argMax(low_balance_threshold, (coalesce(effective_at, occurred_at), event_id)) AS threshold
FROM {database:Identifier}.plan_changes
WHERE
    ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
    AND coalesce(effective_at, occurred_at) <= now64(3)
GROUP BY account_id, app_id
ORDER BY account_id, app_id
