-- Billing sessions per local day, app, channel and kind, for the channel-mix dashboard.
--
-- Reads billing_sessions (channel is not in usage_15m); uniqExact(billing_session_id) keeps
-- it exact before merges without the cost of FINAL. Alerts without a channel show as ''.
-- A session voided by `metering reconcile --repair` in its 15-minute bucket is left out.
--
-- Parameters: database Identifier, tz String, from Date, to Date (local days, inclusive),
-- apps Array(String) (empty: all), account Nullable(String) (NULL: all).
SELECT
    toDate(started_at, {tz:String}) AS day,
    account_id,
    app_id,
    ifNull(channel, '') AS channel,
    kind,
    uniqExact(billing_session_id) AS sessions
FROM {database:Identifier}.billing_sessions
WHERE
    started_at >= toDateTime64(greatest({from:Date}, toDate('1970-01-02')) - 1, 3, 'UTC')
    AND started_at < toDateTime64({to:Date} + 2, 3, 'UTC')
    AND toDate(started_at, {tz:String}) BETWEEN {from:Date} AND {to:Date}
    AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
    AND (billing_session_id, toStartOfFifteenMinutes(started_at)) NOT IN (
        SELECT billing_session_id, toStartOfFifteenMinutes(started_at)
        FROM {database:Identifier}.session_voids
        WHERE
            started_at >= toDateTime64(greatest({from:Date}, toDate('1970-01-02')) - 1, 3, 'UTC')
            AND started_at < toDateTime64({to:Date} + 2, 3, 'UTC')
    )
GROUP BY day, account_id, app_id, channel, kind
ORDER BY day, account_id, app_id, channel, kind
