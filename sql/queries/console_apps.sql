-- Plan & usage: every app of the account with the balance processor's latest view of it
-- (ReplacingMergeTree(version) and FINAL: exact before merges). An app known only by a plan or
-- by usage, not yet published by the processor, has version 0 and empty columns (status `setup`
-- or the plan from plan_changes is decided by the caller).
--
-- Parameters: database Identifier; account String.
WITH apps AS
(
    SELECT DISTINCT app_id
    FROM
    (
        SELECT app_id FROM {database:Identifier}.balance_snapshots WHERE account_id = {account:String}
        UNION ALL
        SELECT app_id FROM {database:Identifier}.plan_changes WHERE account_id = {account:String}
        UNION ALL
        SELECT DISTINCT app_id FROM {database:Identifier}.usage_15m WHERE account_id = {account:String}
    )
)
SELECT
    apps.app_id AS app_id,
    s.plan AS plan,
    s.currency AS currency,
    s.status AS status,
    s.balance AS balance,
    s.threshold AS threshold,
    s.entitled AS entitled,
    s.owner AS owner,
    s.expires_at AS expires_at,
    s.scheduled_plan AS scheduled_plan,
    s.scheduled_at AS scheduled_at,
    s.extension_request_id AS extension_request_id,
    s.extension_days AS extension_days,
    s.extension_reason AS extension_reason,
    s.extension_requested_at AS extension_requested_at,
    s.version AS version
FROM apps
LEFT JOIN
(
    SELECT *
    FROM {database:Identifier}.balance_snapshots FINAL
    WHERE account_id = {account:String}
) AS s ON s.app_id = apps.app_id
ORDER BY app_id
