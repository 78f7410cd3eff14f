-- R11 active agents of one account per period, and over the whole range: the distinct agent_id
-- of the transfers started in it, across the apps kept (an agent working for two apps counts
-- once). Sets: a transfer stored twice changes nothing.
--
-- Parameters as console_usage.sql (database, account, apps, start, end, tz, period). The row
-- with an empty period_key is the whole range (GROUPING SETS).
SELECT
    multiIf(
        {period:String} = 'hour', toString(intDiv(toUnixTimestamp(occurred_at) - toUnixTimestamp({start:DateTime('UTC')}), 3600)),
        {period:String} = 'week', toString(toMonday(toDate(occurred_at, {tz:String}))),
        {period:String} = 'month', toString(toStartOfMonth(toDate(occurred_at, {tz:String}))),
        toString(toDate(occurred_at, {tz:String}))
    ) AS period_key,
    uniqExact(agent_id) AS active_agents
FROM {database:Identifier}.agent_transfers_started
WHERE account_id = {account:String}
    AND occurred_at >= {start:DateTime('UTC')} AND occurred_at < {end:DateTime('UTC')}
    AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
GROUP BY GROUPING SETS ((period_key), ())
