-- The apps with the most billing sessions (usage + alert, R8) over local days from..to,
-- with voice beside, for the "who uses the most" dashboard. Reads usage_15m only.
--
-- Parameters: database Identifier, tz String, from Date, to Date (inclusive), limit UInt32.
SELECT
    account_id,
    app_id,
    uniqExactMergeIf(sessions, kind = 'usage') + uniqExactMergeIf(sessions, kind = 'alert') AS billing_sessions,
    uniqExactMergeIf(sessions, kind = 'voice') AS voice_sessions,
    uniqExactMerge(conversations) AS conversations
FROM {database:Identifier}.usage_15m
WHERE
    bucket >= toDateTime(greatest({from:Date}, toDate('1970-01-02')) - 1, 'UTC')
    AND bucket < toDateTime({to:Date} + 2, 'UTC')
    AND toDate(bucket, {tz:String}) BETWEEN {from:Date} AND {to:Date}
GROUP BY account_id, app_id
ORDER BY billing_sessions DESC, voice_sessions DESC, account_id, app_id
LIMIT {limit:UInt32}
