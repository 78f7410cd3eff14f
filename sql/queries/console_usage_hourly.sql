-- The console's usage series from the hourly rollup (migration 006), for zones whose offsets are
-- whole hours over the range: per kind and period, the sum of the cached exact counts of the
-- hours whose cache is current, and the hours (app, hour) whose cache is missing or stale, which
-- console/usage_rollup.py then computes from their sets.
--
-- Parameters: database Identifier; account String; apps Array(String) (empty: all of the
-- account's); start, end DateTime (UTC hours, [start, end)); tz String; period String
-- (hour | day | week | month): period keys as in console_usage.sql.
SELECT
    kind,
    multiIf(
        {period:String} = 'hour', toString(intDiv(toUnixTimestamp(hour) - toUnixTimestamp({start:DateTime('UTC')}), 3600)),
        {period:String} = 'week', toString(toMonday(toDate(hour, {tz:String}))),
        {period:String} = 'month', toString(toStartOfMonth(toDate(hour, {tz:String}))),
        toString(toDate(hour, {tz:String}))
    ) AS period_key,
    sumIf(cached, version = inserted) AS sessions,
    groupArrayIf((app_id, hour), version != inserted) AS stale
FROM
(
    SELECT
        app_id,
        kind,
        hour,
        sumIf(n, part = 0) + sumIf(n, part = 1) AS inserted,
        argMaxIf(cached, n, part = 2) AS cached,
        maxIf(n, part = 2) AS version
    FROM
    (
        SELECT app_id, kind, hour, 0 AS part, toUInt64(sum(inserted)) AS n, toInt64(0) AS cached
        FROM {database:Identifier}.usage_1h
        WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
            AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
        GROUP BY app_id, kind, hour
        UNION ALL
        SELECT app_id, kind, hour, 1, toUInt64(sum(inserted)), toInt64(0)
        FROM {database:Identifier}.voids_1h
        WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
            AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
        GROUP BY app_id, kind, hour
        UNION ALL
        SELECT app_id, kind, hour, 2, version, sessions
        FROM {database:Identifier}.usage_1h_counts
        WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
            AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    )
    GROUP BY app_id, kind, hour
    HAVING inserted > 0
)
GROUP BY kind, period_key
