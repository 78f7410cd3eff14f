-- What ClickHouse bills for local days from..to, one row per session id and 15-minute bucket, for
-- `metering reconcile` to compare with its recomputation. Times are epoch milliseconds.
--
-- Grouped by the columns that place a session in usage_15m (account, app, kind, bucket): the
-- same id stored in two buckets (a session moved by a late event and repaired) is two rows,
-- each voided or not on its own (voided comes from reconcile_voids.sql). The other columns come
-- from the newest row, as ReplacingMergeTree would keep it.
--
-- Parameters: database Identifier, tz String, from Date, to Date (local days, inclusive).
SELECT
    billing_session_id,
    account_id,
    app_id,
    kind,
    toInt64(toUnixTimestamp64Milli(argMax(started_at, inserted_at))) AS started_ms,
    argMax(conversation_session_id, inserted_at) AS conversation_session,
    toUInt32(argMax(session_index, inserted_at)) AS position,
    toUnixTimestamp64Milli(argMax(conversation_started_at, inserted_at)) AS conversation_started_ms
FROM {database:Identifier}.billing_sessions
WHERE
    started_at >= toDateTime64(greatest({from:Date}, toDate('1970-01-02')) - 1, 3, 'UTC')
    AND started_at < toDateTime64({to:Date} + 2, 3, 'UTC')
    AND toDate(started_at, {tz:String}) BETWEEN {from:Date} AND {to:Date}
GROUP BY billing_session_id, account_id, app_id, kind, toStartOfFifteenMinutes(started_at)
ORDER BY account_id, app_id, billing_session_id, started_ms
