-- The billing sessions behind one app's local day, one row each (FINAL drops replayed
-- copies), for answering "why was I billed this": support and reconciliation drill-down.
-- Sessions voided by `metering reconcile --repair` in their 15-minute bucket are left out.
--
-- Parameters: database Identifier, tz String, day Date, account String, app String,
-- limit UInt32.
SELECT
    billing_session_id,
    kind,
    channel,
    conversation_id,
    conversation_session_id,
    session_index,
    started_at,
    ended_at,
    bot_ms,
    agent_ms,
    alert_id
FROM {database:Identifier}.billing_sessions FINAL
WHERE
    account_id = {account:String}
    AND app_id = {app:String}
    AND started_at >= toDateTime64(greatest({day:Date}, toDate('1970-01-02')) - 1, 3, 'UTC')
    AND started_at < toDateTime64({day:Date} + 2, 3, 'UTC')
    AND toDate(started_at, {tz:String}) = {day:Date}
    AND (billing_session_id, toStartOfFifteenMinutes(started_at)) NOT IN (
        SELECT billing_session_id, toStartOfFifteenMinutes(started_at)
        FROM {database:Identifier}.session_voids
        WHERE account_id = {account:String} AND app_id = {app:String}
    )
ORDER BY started_at, billing_session_id
LIMIT {limit:UInt32}
