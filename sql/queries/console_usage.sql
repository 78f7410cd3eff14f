-- The console's usage series (console.md §1): billing sessions per kind and period of one account
-- (all its apps, or those listed), summed from the exact 15-minute counts of usage_counts
-- (migration 012: |sessions| - |voided| per bucket, recounted by every write).
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
-- a month by its 1st), which is how the console labels it. Every offset since 2000 is a multiple
-- of 15 minutes, so every bucket lies in one period in any zone.
--
-- FINAL keeps the newest count of a key before merges; a key never spans partitions. The buckets
-- are summed first (in the table's order), then placed in their periods: zone arithmetic on a
-- few thousand buckets rather than on every app's row.
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
    SELECT bucket, sum(usage_sessions) AS usage_n, sum(voice_sessions) AS voice_n, sum(alert_sessions) AS alert_n
    FROM {database:Identifier}.usage_counts FINAL
    WHERE account_id = {account:String}
        AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY bucket
)
GROUP BY period_key
SETTINGS do_not_merge_across_partitions_select_final = 1
