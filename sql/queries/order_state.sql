-- An order's latest state, for `metering orders paid|failed|refund` (operators: any account), which
-- checks it before recording a payment the order processor would not apply.
--
-- Parameters: database Identifier; account String; order String.
SELECT order_id, account_id, app_id, payment_status, invoice_id, credit_note_id, amount, currency
FROM {database:Identifier}.orders FINAL
WHERE account_id = {account:String} AND order_id = {order:String}
LIMIT 1
