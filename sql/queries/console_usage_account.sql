-- The console's usage series of every app of one account (console.md §1): billing sessions per
-- kind and period, summed from the exact per-account 15-minute counts of usage_counts_account
-- (migration 013; console_usage.sql reads the per-app counts when apps are listed). Same
-- parameters (apps is not used) and the same period keys as console_usage.sql.
SELECT
    multiIf(
        {period:String} = 'hour', toString(intDiv(toUnixTimestamp(bucket) - toUnixTimestamp({start:DateTime('UTC')}), 3600)),
        {period:String} = 'week', toString(toMonday(toDate(bucket, {tz:String}))),
        {period:String} = 'month', toString(toStartOfMonth(toDate(bucket, {tz:String}))),
        toString(toDate(bucket, {tz:String}))
    ) AS period_key,
    sum(usage_n) AS usage_sessions,
    sum(voice_n) AS voice_sessions,
    sum(alert_n) AS alert_sessions
FROM
(
    SELECT bucket, usage_sessions AS usage_n, voice_sessions AS voice_n, alert_sessions AS alert_n
    FROM {database:Identifier}.usage_counts_account FINAL
    WHERE account_id = {account:String}
        AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
)
GROUP BY period_key
SETTINGS do_not_merge_across_partitions_select_final = 1
