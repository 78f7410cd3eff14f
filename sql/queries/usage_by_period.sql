-- Usage per account, app and period in a reporting zone (R8): the figures `metering compute`
-- prints, summed from the exact 15-minute counts of usage_counts (migration 012).
--
-- Parameters (all bound, none formatted in):
--   database  Identifier               the metering database
--   tz        String                   IANA zone of the calendar (UTC, Asia/Kolkata, ...)
--   period    String                   day | week (ISO, from Monday) | month
--   from, to  Nullable(Date)           first and last local DAY included (NULL: open);
--                                      a week or month cut by them holds only those days
--   apps      Array(String)            app ids to keep (empty: all)
--   account   Nullable(String)         account id to keep (NULL: all)
--
-- Exact before any merge: a count is |sessions| - |voided| of one (account, app, 15-minute
-- bucket), recounted from the session-id sets of usage_15m and voids_15m by every write (a
-- session inserted twice counts once; a void or a move is subtracted where it was counted), and
-- FINAL keeps the newest count of a key. Every offset since 2000 is a multiple of 15 minutes, so a
-- bucket lies in one local day in any zone. The bucket range test only prunes partitions: a local
-- day lies within a day either side of its UTC date (offsets are -12 h to +14 h).
SELECT
    account_id,
    app_id,
    toString(period_start) AS day,
    sum(conv_n) AS conversations,
    sum(usage_n) AS usage_sessions,
    sum(voice_n) AS voice_sessions,
    sum(alert_n) AS alert_sessions,
    usage_sessions + alert_sessions AS billing_sessions
FROM
(
    SELECT
        account_id,
        app_id,
        multiIf(
            {period:String} = 'week', toMonday(toDate(bucket, {tz:String})),
            {period:String} = 'month', toStartOfMonth(toDate(bucket, {tz:String})),
            toDate(bucket, {tz:String})
        ) AS period_start,
        toUInt64(conversations) AS conv_n,
        toUInt64(usage_sessions) AS usage_n,
        toUInt64(voice_sessions) AS voice_n,
        toUInt64(alert_sessions) AS alert_n
    FROM {database:Identifier}.usage_counts FINAL
    WHERE
        ({from:Nullable(Date)} IS NULL OR bucket >= toDateTime(greatest(assumeNotNull({from:Nullable(Date)}), toDate('1970-01-02')) - 1, 'UTC'))
        AND ({to:Nullable(Date)} IS NULL OR bucket < toDateTime(assumeNotNull({to:Nullable(Date)}) + 2, 'UTC'))
        AND ({from:Nullable(Date)} IS NULL OR toDate(bucket, {tz:String}) >= assumeNotNull({from:Nullable(Date)}))
        AND ({to:Nullable(Date)} IS NULL OR toDate(bucket, {tz:String}) <= assumeNotNull({to:Nullable(Date)}))
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
        AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
)
GROUP BY account_id, app_id, period_start
HAVING conversations + usage_sessions + voice_sessions + alert_sessions > 0
ORDER BY account_id, app_id, day
SETTINGS do_not_merge_across_partitions_select_final = 1
