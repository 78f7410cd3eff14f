-- Exact usage of some hours of one account, from the hourly sets (migration 006): per app, kind
-- and hour, |sessions| - |voided| and the version it holds for (inserted rows of both tables),
-- read in one pass per table so the count and its version agree.
--
-- Parameters: database Identifier; account String; apps Array(String) (empty: all of the
-- account's); start, end DateTime (UTC hours [start, end): the span of the hours wanted, which
-- the caller narrows to the stale ones; it keeps what it asked for).
SELECT app_id, kind, hour, sum(ins) AS version, sum(n) AS sessions
FROM
(
    SELECT app_id, kind, hour, toUInt64(sum(inserted)) AS ins, toInt64(uniqExactMerge(sessions)) AS n
    FROM {database:Identifier}.usage_1h
    WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY app_id, kind, hour
    UNION ALL
    SELECT app_id, kind, hour, toUInt64(sum(inserted)), -toInt64(uniqExactMerge(sessions))
    FROM {database:Identifier}.voids_1h
    WHERE account_id = {account:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY app_id, kind, hour
)
GROUP BY app_id, kind, hour
