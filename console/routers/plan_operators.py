"""Operators' route for `metering plans requests|extend|decline`: extension requests across accounts.

Behind the store's operator token like the other operators' routes (``console.routers.operators``);
the command asks it when the store holds the embedded database.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from fastapi.responses import JSONResponse

from console.context import ConsoleContext
from console.deps import console_context, operator_router
from consumers.plan_actions import query_extension_requests, requests_json

router = operator_router(tags=["operators"])


@router.get("/plans/extension-requests", summary="Extension requests and their status (operator token)")
def extension_requests(
    context: Annotated[ConsoleContext, Depends(console_context)],
    request: Annotated[str | None, Query(description="one request by id")] = None,
    account: Annotated[str | None, Query(description="one account's requests")] = None,
) -> JSONResponse:
    found = query_extension_requests(context.client, context.database, request=request, account=account)
    return JSONResponse(requests_json(found), headers={"Cache-Control": "no-store"})
