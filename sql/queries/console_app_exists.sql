-- Whether an app belongs to an account: it has usage, a plan, funds, seats or a balance there.
-- One row if so, none if not; the console answers 404 alike for another account's app and for
-- an app nobody has, so nothing leaks about other tenants.
--
-- Parameters: database Identifier; account String; app String.
SELECT 1
FROM
(
    SELECT app_id FROM {database:Identifier}.usage_15m
    WHERE account_id = {account:String} AND app_id = {app:String} LIMIT 1
    UNION ALL
    SELECT app_id FROM {database:Identifier}.plan_changes
    WHERE app_id = {app:String} AND account_id = {account:String} LIMIT 1
    UNION ALL
    SELECT app_id FROM {database:Identifier}.funds_added
    WHERE app_id = {app:String} AND account_id = {account:String} LIMIT 1
    UNION ALL
    SELECT app_id FROM {database:Identifier}.agent_subscriptions
    WHERE app_id = {app:String} AND account_id = {account:String} LIMIT 1
    UNION ALL
    SELECT app_id FROM {database:Identifier}.balance_snapshots
    WHERE app_id = {app:String} AND account_id = {account:String} LIMIT 1
)
LIMIT 1
