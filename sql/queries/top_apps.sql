-- The apps with the most billing sessions (usage + alert, R8) over local days from..to,
-- with voice beside, for the "who uses the most" dashboard. Reads usage_15m only, minus the
-- voids of `metering reconcile --repair` per 15-minute bucket (see usage_by_period.sql).
--
-- Parameters: database Identifier, tz String, from Date, to Date (inclusive), limit UInt32.
SELECT
    account_id,
    app_id,
    sumIf(n, kind = 'usage') + sumIf(n, kind = 'alert') AS billing_sessions,
    sumIf(n, kind = 'voice') AS voice_sessions,
    sum(c) AS conversations
FROM
(
    SELECT account_id, app_id, kind, bucket,
           toInt64(uniqExactMerge(sessions)) AS n, toInt64(uniqExactMerge(conversations)) AS c
    FROM {database:Identifier}.usage_15m
    WHERE
        bucket >= toDateTime(greatest({from:Date}, toDate('1970-01-02')) - 1, 'UTC')
        AND bucket < toDateTime({to:Date} + 2, 'UTC')
        AND toDate(bucket, {tz:String}) BETWEEN {from:Date} AND {to:Date}
    GROUP BY account_id, app_id, kind, bucket
    UNION ALL
    SELECT account_id, app_id, kind, bucket,
           -toInt64(uniqExactMerge(sessions)), -toInt64(uniqExactMerge(conversations))
    FROM {database:Identifier}.voids_15m
    WHERE
        bucket >= toDateTime(greatest({from:Date}, toDate('1970-01-02')) - 1, 'UTC')
        AND bucket < toDateTime({to:Date} + 2, 'UTC')
        AND toDate(bucket, {tz:String}) BETWEEN {from:Date} AND {to:Date}
    GROUP BY account_id, app_id, kind, bucket
)
GROUP BY account_id, app_id
HAVING billing_sessions + voice_sessions > 0
ORDER BY billing_sessions DESC, voice_sessions DESC, account_id, app_id
LIMIT {limit:UInt32}
