-- This billing period's sessions and cost per app of the account: the billing sessions that start
-- in [from, to) (UTC instants: the period is the UTC calendar month), each priced by the plan in
-- force at its start (console_plans_in_force.sql's rule, the balance processor's). FINAL counts a
-- replayed session once; voided sessions (reconcile --repair) are left out; a session before any
-- plan is counted and unpriced, never priced at zero. One row per app and plan currency.
--
-- Parameters: database Identifier; account String; from, to DateTime64(3).
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
    WHERE account_id = {account:String}
),
cancelled AS
(
    SELECT p.app_id AS app_id, p.event_id AS event_id
    FROM plans AS p
    INNER JOIN plans AS q ON q.app_id = p.app_id
    WHERE p.effective > p.decided AND (q.decided, q.event_id) > (p.decided, p.event_id) AND q.decided < p.effective
)
SELECT
    s.app_id AS app_id,
    p.currency AS currency,
    countIf(s.kind = 'usage') AS usage_sessions,
    countIf(s.kind = 'alert') AS alert_sessions,
    countIf(s.kind = 'voice') AS voice_sessions,
    sumIf(multiIf(s.kind = 'usage', p.price_usage, s.kind = 'alert', p.price_alert, p.price_voice), p.priced = 1)
        AS cost,
    countIf(p.priced = 0) AS unpriced
FROM
(
    SELECT app_id, kind, started_at
    FROM {database:Identifier}.billing_sessions FINAL
    WHERE
        account_id = {account:String}
        AND started_at >= {from:DateTime64(3)}
        AND started_at < {to:DateTime64(3)}
        AND billing_session_id NOT IN (
            SELECT billing_session_id FROM {database:Identifier}.session_voids WHERE account_id = {account:String}
        )
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
) AS p ON s.app_id = p.app_id AND s.started_at >= p.effective
GROUP BY app_id, currency
ORDER BY app_id, currency
