"""Probes, open to anyone: ``/healthz`` (the server serves) and ``/readyz`` (ClickHouse answers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.responses import JSONResponse

from console.context import ConsoleContext
from console.deps import console_context, open_router

router = open_router(tags=["probes"])


@router.get("/healthz", summary="200 while the server serves")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 when ClickHouse answers, 503 with the reason otherwise")
def readyz(context: Annotated[ConsoleContext, Depends(console_context)]) -> JSONResponse:
    reason = context.unready_reason()
    if reason is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
