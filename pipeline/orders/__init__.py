"""Orders, payments and invoices (console.md section 3): a functional core like ``pipeline.balance``.

``events`` is the contract of the billing-orders topic, ``book`` the per-account rules (order
states, payments, invoice numbers, the ``funds_added`` a paid order produces), ``providers`` the
payment-provider adapter (the invoice PDF is rendered by ``console.documents``). The order processor
(``pipeline.stream.orders``) is the thin Kafka loop around them; ``docs/orders.md`` explains it.
"""
