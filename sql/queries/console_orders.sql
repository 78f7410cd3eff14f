-- Orders & invoices: the account's orders, newest first (the latest state of each: FINAL by version),
-- a page at a time: those before the cursor (created_at, order_id) in that order, one more than the
-- page to know whether there is a next one. Without a cursor the route binds one after any order.
--
-- Parameters: database Identifier; account String; limit UInt32; before_at DateTime64(3, 'UTC');
-- before_id String.
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
    AND (created_at, order_id) < ({before_at:DateTime64(3, 'UTC')}, {before_id:String})
ORDER BY created_at DESC, order_id DESC
LIMIT {limit:UInt32}
