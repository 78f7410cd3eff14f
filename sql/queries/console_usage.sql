-- The console's usage series (console.md §1): billing sessions per app, kind and period of one
-- account, from the 15-minute aggregates minus the reconcile voids.
--
-- Parameters (all bound):
--   database  Identifier
--   account   String          the token's account: every row is this account's
--   apps      Array(String)   app ids to keep (empty: every app of the account)
--   start,end DateTime        the range as UTC instants [start, end): local period starts, so
--                             every 15-minute bucket falls wholly inside or outside
--   tz        String          IANA zone of the periods
--   period    String          hour | day | week | month
--
-- A period key is, for hours, the hour's index from start (hours are whole 3600 s steps of UTC,
-- a half-hour zone's included); otherwise the period's first local day (a week by its Monday,
-- a month by its 1st), which is how the console labels it.
--
-- Exact before and after merges: per bucket, uniqExactMerge unions the session-id sets of every
-- part (a session inserted twice counts once) and the voided ids, a subset of the counted ones,
-- are subtracted (see usage_by_period.sql, docs/reconcile.md).
SELECT
    app_id,
    kind,
    multiIf(
        {period:String} = 'hour', toString(intDiv(toUnixTimestamp(bucket) - toUnixTimestamp({start:DateTime('UTC')}), 3600)),
        {period:String} = 'week', toString(toMonday(toDate(bucket, {tz:String}))),
        {period:String} = 'month', toString(toStartOfMonth(toDate(bucket, {tz:String}))),
        toString(toDate(bucket, {tz:String}))
    ) AS period_key,
    sum(n) AS sessions
FROM
(
    SELECT app_id, kind, bucket, toInt64(uniqExactMerge(sessions)) AS n
    FROM {database:Identifier}.usage_15m
    WHERE account_id = {account:String}
        AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY app_id, kind, bucket
    UNION ALL
    SELECT app_id, kind, bucket, -toInt64(uniqExactMerge(sessions))
    FROM {database:Identifier}.voids_15m
    WHERE account_id = {account:String}
        AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY app_id, kind, bucket
)
GROUP BY app_id, kind, period_key
HAVING sessions != 0
