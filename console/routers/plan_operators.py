"""Operators' routes for `metering plans requests|extend|decline` (extension requests across accounts) and
`metering orders paid|failed|refund` (an order's state, checked before a payment is recorded).

Behind the store's operator token like the other operators' routes (``console.routers.operators``);
the commands ask them when the store holds the embedded database.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from fastapi.responses import JSONResponse

from console.context import ConsoleContext
from console.deps import console_context, operator_router
from consumers.reports.operators import order_json, query_extension_requests, query_order_state, requests_json

router = operator_router(tags=["operators"])


@router.get("/plans/extension-requests", summary="Extension requests and their status (operator token)")
def extension_requests(
    context: Annotated[ConsoleContext, Depends(console_context)],
    request: Annotated[str | None, Query(description="one request by id")] = None,
    account: Annotated[str | None, Query(description="one account's requests")] = None,
) -> JSONResponse:
    found = query_extension_requests(context.client, context.database, request=request, account=account)
    return JSONResponse(requests_json(found), headers={"Cache-Control": "no-store"})


@router.get("/orders/state", summary="An order's latest state (operator token)")
def order_state(
    context: Annotated[ConsoleContext, Depends(console_context)],
    account: Annotated[str, Query(min_length=1, description="the order's account")],
    order: Annotated[str, Query(min_length=1, description="the order id")],
) -> JSONResponse:
    found = query_order_state(context.client, context.database, account=account, order=order)
    return JSONResponse(order_json(found), headers={"Cache-Control": "no-store"})
