-- The first answer remembered for an Idempotency-Key of the account and route (kept at least 24 h).
--
-- Parameters: database Identifier; account String; route String; key String.
SELECT body_sha256, status, response
FROM {database:Identifier}.idempotency_keys
WHERE
    account_id = {account:String}
    AND route = {route:String}
    AND key = {key:String}
    AND created_at > now64(3) - INTERVAL 2 DAY
ORDER BY created_at
LIMIT 1
