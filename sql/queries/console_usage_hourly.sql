-- The console's usage series from the hourly rollup (migration 006), for zones whose offsets are
-- whole hours over the range. Per kind and period: the sum of the cached counts of the hours in
-- [start, end) of every app and UTC day whose cache version still equals the rows inserted into
-- that day (nothing arrived since). One more row (kind '') lists the (app, day) pairs whose cache
-- is missing or stale, which console/usage_rollup.py computes from their sets.
--
-- Parameters: database Identifier; account String; apps Array(String) (empty: all of the
-- account's); start, end DateTime (UTC hours, [start, end)); tz String; period String
-- (hour | day | week | month): period keys as in console_usage.sql.
WITH
    toDate({start:DateTime('UTC')}, 'UTC') AS first_day,
    toDate({end:DateTime('UTC')} - 1, 'UTC') AS last_day,
    versions AS
    (
        SELECT app_id, toDate(hour, 'UTC') AS day, toUInt64(sum(inserted)) AS version
        FROM
        (
            SELECT app_id, hour, inserted FROM {database:Identifier}.usage_1h
            WHERE account_id = {account:String}
                AND hour >= toDateTime(first_day, 'UTC') AND hour < toDateTime(last_day + 1, 'UTC')
                AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
            UNION ALL
            SELECT app_id, hour, inserted FROM {database:Identifier}.voids_1h
            WHERE account_id = {account:String}
                AND hour >= toDateTime(first_day, 'UTC') AND hour < toDateTime(last_day + 1, 'UTC')
                AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
        )
        GROUP BY app_id, day
    )
SELECT
    kind,
    multiIf(
        {period:String} = 'hour', toString(intDiv(toUnixTimestamp(hour) - toUnixTimestamp({start:DateTime('UTC')}), 3600)),
        {period:String} = 'week', toString(toMonday(toDate(hour, {tz:String}))),
        {period:String} = 'month', toString(toStartOfMonth(toDate(hour, {tz:String}))),
        toString(toDate(hour, {tz:String}))
    ) AS period_key,
    sum(n) AS counted,
    [] AS stale
FROM {database:Identifier}.usage_day_counts FINAL
ARRAY JOIN hours AS hour, kinds AS kind, sessions AS n
WHERE account_id = {account:String} AND day >= first_day AND day <= last_day
    AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    AND (app_id, day, version) IN (SELECT app_id, day, version FROM versions)
    AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
GROUP BY kind, period_key
UNION ALL
SELECT '', '', 0, groupArray((app_id, day))
FROM versions
WHERE (app_id, day, version) NOT IN (
    SELECT app_id, day, version FROM {database:Identifier}.usage_day_counts FINAL
    WHERE account_id = {account:String} AND day >= first_day AND day <= last_day
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
)
