-- R12 cost of the billing sessions that start on the local days from..to (inclusive), each priced
-- by the plan in force at its start, as the balance processor orders plans (docs/balances.md): in
-- force from effective_at (default occurred_at); of two at the same millisecond the greater
-- event_id; a plan scheduled for later is replaced by any plan of the app decided after it and
-- before it took effect. For `metering plans` (this month's cost); the console's
-- console_month_usage.sql is the same rule for one account.
--
-- billing_sessions FINAL counts a replayed session once; voided sessions (migration 004,
-- `metering reconcile --repair`) are not billed; a session before any plan is unpriced: counted,
-- never priced at zero (as the balance processor holds it). One row per app and plan currency.
--
-- Parameters: database Identifier; tz String; from, to Date; account Nullable(String).
WITH plans AS
(
    SELECT
        app_id,
        event_id,
        coalesce(effective_at, occurred_at) AS effective,
        occurred_at AS decided,
        currency,
        price_per_usage_session,
        price_per_alert_session,
        price_per_voice_session
    FROM {database:Identifier}.plan_changes FINAL
    WHERE {account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)})
),
cancelled AS
(
    SELECT p.app_id AS app_id, p.event_id AS event_id
    FROM plans AS p
    INNER JOIN plans AS q ON q.app_id = p.app_id
    WHERE p.effective > p.decided AND (q.decided, q.event_id) > (p.decided, p.event_id) AND q.decided < p.effective
)
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
        effective,
        argMax(currency, event_id) AS currency,
        argMax(price_per_usage_session, event_id) AS price_usage,
        argMax(price_per_alert_session, event_id) AS price_alert,
        argMax(price_per_voice_session, event_id) AS price_voice,
        toUInt8(1) AS priced
    FROM plans
    WHERE (app_id, event_id) NOT IN (SELECT app_id, event_id FROM cancelled)
    GROUP BY app_id, effective
) AS p
ON s.app_id = p.app_id AND s.started_at >= p.effective
GROUP BY account_id, app_id, currency
ORDER BY account_id, app_id, currency
