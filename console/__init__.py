"""The Billing console: one FastAPI application, served by uvicorn in the store process.

The product is defined in console.md (routes, claims, roles, status codes, CSV columns). Layout
(FastAPI's "bigger applications"): ``app.py`` is the factory and lists the routers; one router
per section under ``routers/``; auth, audiences and CSRF in ``deps.py``; roles as data in
``permissions.py``; the error shape in ``errors.py``; the account-scoped ClickHouse access in
``tenancy.py``; what routes work with in ``context.py``.

How to add a section (for the plans, orders and pages that build on this)
-------------------------------------------------------------------------

1. A module ``console/routers/<section>.py`` with a router that declares its audience::

       from console.deps import billing_router, account_scope, require_billing_admin
       router = billing_router(tags=["plans"])          # the account's own admins

   ``operator_router()`` is for the store's operator token (cross-account, CLI only) and
   ``open_router()`` for anything anyone may call. A route on none of them, or on two, stops
   ``create_app`` with the route's name; ``tests/unit/test_console_auth_matrix.py`` then calls
   every route with every kind of caller, so a new route is covered without a line of test.
   Write routes as plain ``def`` (FastAPI runs them in its thread pool; ClickHouse calls block).
2. Add the router to ``ROUTERS`` in ``console/app.py``.
3. In a route:

   - ``scope: Annotated[AccountScope, Depends(account_scope)]``: ``scope.query("<name>", ...)``
     runs ``sql/queries/<name>.sql`` with ``account`` bound to the token's ``account_id`` (the
     query must filter on ``{account:String}``: an unscoped one raises); ``scope.require_app(app)``
     answers 404 for an app of another account exactly as for a missing one.
   - ``principal: Annotated[Principal, Depends(require_billing_admin)]``: who is asking
     (``user``, ``account_id``, ``role``, ``shared``); cached per request, verified once.
   - ``context: Annotated[ConsoleContext, Depends(console_context)]``: the store's client,
     ``context.own_handle()`` (a database handle of the caller's own, for anything streamed or
     long: exports), ``context.now()`` (``METERING_CONSOLE_NOW`` in tests), and
     ``context.extras`` for what a section adds (a Kafka producer, the plan catalogue): put it
     there in ``console.app.store_context`` and read it through a dependency of your own.
   - Errors: ``raise bad_parameter("amount", "must be greater than 0")`` (400
     ``{"error", "parameter"}``), ``not_found(...)``, ``forbidden(reason, message)``,
     ``conflict(...)`` (409), or ``ApiError(status, message)`` from ``console.errors``.
     FastAPI's own validation errors already come out as 400 naming the parameter (never 422).
   - POST by a cookie session: ``require_billing_admin`` already checks the CSRF token
     (``X-CSRF-Token`` header or ``csrf_token`` form field; ``console.deps.csrf_token(session)``
     computes it for a page). Bodies over 1 MiB get 413 before a route sees them
     (``console/limits.py``).

Unknown query parameters are refused with a 400 naming them, for every route.
"""
