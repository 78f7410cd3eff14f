-- The voids recorded for local days from..to: which session id is voided in which 15-minute
-- bucket (a void takes a session out of the bucket its row was counted in, nowhere else).
--
-- Parameters: database Identifier, tz String, from Date, to Date (local days, inclusive).
SELECT DISTINCT
    billing_session_id,
    account_id,
    app_id,
    kind,
    toInt64(intDiv(toUnixTimestamp64Milli(started_at), 900000) * 900000) AS bucket_ms
FROM {database:Identifier}.session_voids
WHERE
    started_at >= toDateTime64(greatest({from:Date}, toDate('1970-01-02')) - 1, 3, 'UTC')
    AND started_at < toDateTime64({to:Date} + 2, 3, 'UTC')
    AND toDate(started_at, {tz:String}) BETWEEN {from:Date} AND {to:Date}
