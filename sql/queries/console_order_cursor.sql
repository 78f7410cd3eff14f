-- Where a page of Orders & invoices starts: the (created_at, order_id) of the order the cursor names,
-- in the token's account only (an order of another account is no cursor: 400, as an unknown one).
--
-- Parameters: database Identifier; account String; order String.
SELECT created_at, order_id
FROM {database:Identifier}.orders FINAL
WHERE account_id = {account:String} AND order_id = {order:String}
LIMIT 1
