-- Exact usage of some hours of one account, from the hourly sets (migration 006): per app, kind
-- and hour, |sessions| - |voided| and the version it holds for (inserted rows of both tables),
-- read in one pass per table so the count and its version agree.
--
-- Parameters: database Identifier; account String; keys Array(Tuple(String, DateTime)) the
-- (app_id, hour) pairs; start, end DateTime (UTC: bounds the parts read).
SELECT app_id, kind, hour, sum(ins) AS version, sum(n) AS sessions
FROM
(
    SELECT app_id, kind, hour, toUInt64(sum(inserted)) AS ins, toInt64(uniqExactMerge(sessions)) AS n
    FROM {database:Identifier}.usage_1h
    WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
        AND (app_id, hour) IN {keys:Array(Tuple(String, DateTime('UTC')))}
    GROUP BY app_id, kind, hour
    UNION ALL
    SELECT app_id, kind, hour, toUInt64(sum(inserted)), -toInt64(uniqExactMerge(sessions))
    FROM {database:Identifier}.voids_1h
    WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
        AND (app_id, hour) IN {keys:Array(Tuple(String, DateTime('UTC')))}
    GROUP BY app_id, kind, hour
)
GROUP BY app_id, kind, hour
