-- The first answer remembered for an Idempotency-Key of the account and route (kept for good: migration 020).
--
-- Parameters: database Identifier; account String; route String; key String.
SELECT body_sha256, status, response
FROM {database:Identifier}.idempotency_keys
WHERE
    account_id = {account:String}
    AND route = {route:String}
    AND key = {key:String}
ORDER BY created_at
LIMIT 1
