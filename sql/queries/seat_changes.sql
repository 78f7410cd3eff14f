-- R11 seat changes (agents_subscribed) of the apps asked for, for SeatTimeline to turn into seats
-- per day in the reporting zone. FINAL keeps one row per (app_id, event_id) as R1 does, so the
-- answer does not change when parts merge; the timeline would drop exact copies anyway.
--
-- Parameters: database Identifier; apps Array(String) (empty: all); account Nullable(String);
-- to Nullable(Date), the last local day reported (changes after it cannot matter; a local day
-- ends within two days of its UTC date).
SELECT
    app_id,
    toUnixTimestamp64Milli(occurred_at) AS t_ms,
    event_id,
    agents
FROM {database:Identifier}.agent_subscriptions FINAL
WHERE
    (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
    AND ({to:Nullable(Date)} IS NULL OR occurred_at < toDateTime(assumeNotNull({to:Nullable(Date)}) + 2, 'UTC'))
ORDER BY app_id, t_ms, event_id
