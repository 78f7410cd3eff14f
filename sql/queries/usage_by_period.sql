-- Usage per account, app and period in a reporting zone (R8): the figures `metering compute`
-- prints, read from the 15-minute buckets only.
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
-- Exact before any merge: uniqExactMerge unions the session-id sets of every part, so a
-- session inserted twice under different tokens still counts once. The bucket range test
-- only prunes partitions: a local day lies within a day either side of its UTC date
-- (offsets are -12 h to +14 h).
--
-- Voids (migration 004, `metering reconcile --repair`) are subtracted per 15-minute bucket:
-- in each bucket the voided ids are a subset of the counted ones, so the difference of the
-- two set sizes is the size of the difference, whatever the order or repetition of inserts.
-- The buckets of a period are then added up (a session id lives in one bucket).
SELECT
    account_id,
    app_id,
    toString(period_start) AS day,
    sumIf(conv_n, kind IN ('usage', 'voice')) AS conversations,
    sumIf(session_n, kind = 'usage') AS usage_sessions,
    sumIf(session_n, kind = 'voice') AS voice_sessions,
    sumIf(session_n, kind = 'alert') AS alert_sessions,
    usage_sessions + alert_sessions AS billing_sessions
FROM
(
    SELECT
        account_id,
        app_id,
        kind,
        multiIf(
            {period:String} = 'week', toMonday(toDate(bucket, {tz:String})),
            {period:String} = 'month', toStartOfMonth(toDate(bucket, {tz:String})),
            toDate(bucket, {tz:String})
        ) AS period_start,
        sum(bucket_sessions) AS session_n,
        sum(bucket_conversations) AS conv_n
    FROM
    (
        SELECT
            account_id,
            app_id,
            kind,
            bucket,
            toInt64(uniqExactMerge(sessions)) AS bucket_sessions,
            toInt64(uniqExactMerge(conversations)) AS bucket_conversations
        FROM {database:Identifier}.usage_15m
        WHERE
            ({from:Nullable(Date)} IS NULL OR bucket >= toDateTime(greatest(assumeNotNull({from:Nullable(Date)}), toDate('1970-01-02')) - 1, 'UTC'))
            AND ({to:Nullable(Date)} IS NULL OR bucket < toDateTime(assumeNotNull({to:Nullable(Date)}) + 2, 'UTC'))
            AND ({from:Nullable(Date)} IS NULL OR toDate(bucket, {tz:String}) >= assumeNotNull({from:Nullable(Date)}))
            AND ({to:Nullable(Date)} IS NULL OR toDate(bucket, {tz:String}) <= assumeNotNull({to:Nullable(Date)}))
            AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
            AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
        GROUP BY account_id, app_id, kind, bucket
        UNION ALL
        SELECT
            account_id,
            app_id,
            kind,
            bucket,
            -toInt64(uniqExactMerge(sessions)),
            -toInt64(uniqExactMerge(conversations))
        FROM {database:Identifier}.voids_15m
        WHERE
            ({from:Nullable(Date)} IS NULL OR bucket >= toDateTime(greatest(assumeNotNull({from:Nullable(Date)}), toDate('1970-01-02')) - 1, 'UTC'))
            AND ({to:Nullable(Date)} IS NULL OR bucket < toDateTime(assumeNotNull({to:Nullable(Date)}) + 2, 'UTC'))
            AND ({from:Nullable(Date)} IS NULL OR toDate(bucket, {tz:String}) >= assumeNotNull({from:Nullable(Date)}))
            AND ({to:Nullable(Date)} IS NULL OR toDate(bucket, {tz:String}) <= assumeNotNull({to:Nullable(Date)}))
            AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
            AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
        GROUP BY account_id, app_id, kind, bucket
    )
    GROUP BY account_id, app_id, kind, period_start
)
GROUP BY account_id, app_id, period_start
HAVING conversations + usage_sessions + voice_sessions + alert_sessions > 0
ORDER BY account_id, app_id, day
