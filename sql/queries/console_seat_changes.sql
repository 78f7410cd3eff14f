-- R11 seat changes (agents_subscribed) of one account's apps up to the end of a range, for
-- SeatTimeline to give the seats in force per period (carried forward without end). FINAL keeps
-- one row per (app_id, event_id) as R1 does.
--
-- Parameters: database Identifier; account String; apps Array(String) (empty: all of the
-- account's); end DateTime (UTC, exclusive: later changes cannot matter).
SELECT
    app_id,
    toUnixTimestamp64Milli(occurred_at) AS t_ms,
    event_id,
    agents
FROM {database:Identifier}.agent_subscriptions FINAL
WHERE account_id = {account:String}
    AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    AND occurred_at < {end:DateTime('UTC')}
ORDER BY app_id, t_ms, event_id
