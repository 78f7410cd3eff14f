-- The account's billing type: the latest account_changed by (occurred_at, event_id); no event: prepaid.
--
-- Parameters: database Identifier; account String.
SELECT if(count() = 0, 'prepaid', argMax(billing_type, (occurred_at, event_id))) AS billing_type
FROM {database:Identifier}.billing_accounts FINAL
WHERE account_id = {account:String}
