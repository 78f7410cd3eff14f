-- R12 cost of the billing sessions that start on the local days from..to (inclusive), each priced
-- by the plan in force at its start: the last plan_changed at or before it (of plans stamped with
-- the same millisecond, the greatest event_id). For `metering plans` (this month's cost).
--
-- billing_sessions FINAL counts a replayed session once; voided sessions (migration 004,
-- `metering reconcile --repair`) are not billed; a session before any plan is unpriced: counted,
-- never priced at zero (as the balance processor holds it). One row per app and plan currency.
--
-- Parameters: database Identifier; tz String; from, to Date; account Nullable(String).
SELECT
    s.account_id AS account_id,
    s.app_id AS app_id,
    p.currency AS currency,
    sumIf(multiIf(s.kind = 'usage', p.price_usage, s.kind = 'alert', p.price_alert, p.price_voice), p.priced = 1) AS cost,
    countIf(p.priced = 0) AS unpriced
FROM
(
    SELECT account_id, app_id, kind, started_at
    FROM {database:Identifier}.billing_sessions FINAL
    WHERE
        started_at >= toDateTime(greatest({from:Date}, toDate('1970-01-02')) - 1, 'UTC')
        AND started_at < toDateTime({to:Date} + 2, 'UTC')
        AND toDate(started_at, {tz:String}) BETWEEN {from:Date} AND {to:Date}
        AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
        AND billing_session_id NOT IN (SELECT billing_session_id FROM {database:Identifier}.session_voids)
) AS s
ASOF LEFT JOIN
(
    SELECT
        app_id,
        occurred_at,
        argMax(currency, event_id) AS currency,
        argMax(price_per_usage_session, event_id) AS price_usage,
        argMax(price_per_alert_session, event_id) AS price_alert,
        argMax(price_per_voice_session, event_id) AS price_voice,
        toUInt8(1) AS priced
    FROM {database:Identifier}.plan_changes
    GROUP BY app_id, occurred_at
) AS p
ON s.app_id = p.app_id AND s.started_at >= p.occurred_at
GROUP BY account_id, app_id, currency
ORDER BY account_id, app_id, currency
