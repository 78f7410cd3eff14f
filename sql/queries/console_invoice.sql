-- One invoice or credit note of the account, as issued (the invoice_issued record as JSON).
--
-- Parameters: database Identifier; account String; invoice String.
SELECT document
FROM {database:Identifier}.invoices FINAL
WHERE account_id = {account:String} AND invoice_id = {invoice:String}
LIMIT 1
