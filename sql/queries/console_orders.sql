-- Orders & invoices: the account's orders, newest first (the latest state of each: FINAL by version).
--
-- Parameters: database Identifier; account String; limit UInt32.
SELECT
    order_id,
    billing_date,
    description,
    amount,
    currency,
    payment_method,
    payment_status,
    invoice_id,
    credit_note_id,
    app_id,
    created_at
FROM {database:Identifier}.orders FINAL
WHERE account_id = {account:String}
ORDER BY created_at DESC, order_id DESC
LIMIT {limit:UInt32}
