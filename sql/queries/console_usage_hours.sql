-- Exact usage of whole UTC days of one account, per app, kind and hour, from the hourly sets
-- (migration 006): |sessions| - |voided| and the rows inserted into both tables (their sum over a
-- day is its cache version), read in one pass per table so counts and versions agree.
--
-- Parameters: database Identifier; account String; apps Array(String) (empty: all of the
-- account's); first, last Date (UTC days, inclusive: the span of the days wanted).
SELECT app_id, kind, hour, sum(ins) AS inserted, sum(n) AS sessions
FROM
(
    SELECT app_id, kind, hour, toUInt64(sum(inserted)) AS ins, toInt64(uniqExactMerge(sessions)) AS n
    FROM {database:Identifier}.usage_1h
    WHERE account_id = {account:String}
        AND hour >= toDateTime({first:Date}, 'UTC') AND hour < toDateTime({last:Date} + 1, 'UTC')
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY app_id, kind, hour
    UNION ALL
    SELECT app_id, kind, hour, toUInt64(sum(inserted)), -toInt64(uniqExactMerge(sessions))
    FROM {database:Identifier}.voids_1h
    WHERE account_id = {account:String}
        AND hour >= toDateTime({first:Date}, 'UTC') AND hour < toDateTime({last:Date} + 1, 'UTC')
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY app_id, kind, hour
)
GROUP BY app_id, kind, hour
