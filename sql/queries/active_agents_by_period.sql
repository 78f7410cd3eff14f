-- R11 active agents per account, app and period in a reporting zone: the distinct agent_id of
-- the transfers that started in the period (a set: copies of a transfer change nothing).
--
-- Parameters as in usage_by_period (database, tz, period, from, to, apps, account); a week or
-- month cut by from/to holds only the days inside, and is named by its first day, as there.
SELECT
    account_id,
    app_id,
    toString(multiIf(
        {period:String} = 'week', toMonday(toDate(occurred_at, {tz:String})),
        {period:String} = 'month', toStartOfMonth(toDate(occurred_at, {tz:String})),
        toDate(occurred_at, {tz:String})
    )) AS period_start,
    uniqExact(agent_id) AS active_agents
FROM {database:Identifier}.agent_transfers_started
WHERE
    ({from:Nullable(Date)} IS NULL OR occurred_at >= toDateTime(greatest(assumeNotNull({from:Nullable(Date)}), toDate('1970-01-02')) - 1, 'UTC'))
    AND ({to:Nullable(Date)} IS NULL OR occurred_at < toDateTime(assumeNotNull({to:Nullable(Date)}) + 2, 'UTC'))
    AND ({from:Nullable(Date)} IS NULL OR toDate(occurred_at, {tz:String}) >= assumeNotNull({from:Nullable(Date)}))
    AND ({to:Nullable(Date)} IS NULL OR toDate(occurred_at, {tz:String}) <= assumeNotNull({to:Nullable(Date)}))
    AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
GROUP BY account_id, app_id, period_start
ORDER BY account_id, app_id, period_start
