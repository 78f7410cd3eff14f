"""Sign in and out: ``POST /login`` turns an identity provider's token into the session cookie.

The cookie holds the token itself (HttpOnly, SameSite=Lax, Secure behind HTTPS, expiring with
the token), so a session ends when the token does and needs no server-side state. The CSRF token
of the session comes back in the answer and in the ``metering_csrf`` cookie (see ``console.deps``).
A form post is answered with a redirect (to ``next``, a path of this site, or ``/console/usage``;
back to ``/login?error=...`` when the token is refused); a JSON post with JSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from console.auth import AuthError, KeysUnavailableError, Principal
from console.context import ConsoleContext
from console.deps import CSRF_COOKIE, SESSION_COOKIE, console_context, csrf_token, open_router
from console.errors import ApiError, bad_parameter, error_response, unauthorized
from console.permissions import BILLING_VIEW, permissions

router = open_router(tags=["session"])

_FORMS: Final = ("application/x-www-form-urlencoded", "multipart/form-data")
DEFAULT_LANDING: Final = "/console/usage"

_LOGIN_BODY: Final[dict[str, Any]] = {
    "required": True,
    "content": {
        media: {
            "schema": {
                "type": "object",
                "required": ["token"],
                "properties": {
                    "token": {"type": "string", "description": "a JWT from the identity provider"},
                    **({} if media == "application/json" else {"next": {"type": "string", "description": "then go"}}),
                },
                "example": {"token": "eyJ..."},
            }
        }
        for media in ("application/json", "application/x-www-form-urlencoded")
    },
}


@router.post(
    "/login",
    summary="Sign in with an identity provider's token (JSON or form field `token`); sets the session cookie",
    openapi_extra={"requestBody": _LOGIN_BODY},
    responses={200: {"description": "signed in"}, 303: {"description": "signed in (form): redirect"}},
)
async def login(request: Request, context: Annotated[ConsoleContext, Depends(console_context)]) -> Response:
    is_form = request.headers.get("content-type", "").startswith(_FORMS)
    token, landing = await _read_login(request, is_form)
    try:
        principal = context.authenticator.verify(token)
    except AuthError as exc:
        if is_form:
            return RedirectResponse(f"/login?{urlencode({'error': str(exc)})}", status_code=303)
        return error_response(unauthorized(str(exc)))
    except KeysUnavailableError as exc:
        return error_response(ApiError(503, str(exc)))
    response: Response
    if is_form:
        response = RedirectResponse(landing, status_code=303)
    else:
        response = JSONResponse(_signed_in(principal, csrf_token(token)))
    _set_cookies(response, request, token, principal)
    return response


@router.post("/logout", summary="Sign out: clears the session cookie", status_code=200)
def logout(request: Request) -> Response:
    response: Response = JSONResponse({"status": "signed out"})
    if request.headers.get("content-type", "").startswith(_FORMS):
        response = RedirectResponse("/login", status_code=303)
    secure = request.url.scheme == "https"
    response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="lax")
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, samesite="lax")
    return response


async def _read_login(request: Request, is_form: bool) -> tuple[str, str]:
    """The token and where to land; 400 naming ``token`` when there is none."""
    landing = DEFAULT_LANDING
    if is_form:
        form = await request.form()
        token, following = form.get("token"), form.get("next")
        if isinstance(following, str) and following.startswith("/") and not following.startswith("//"):
            landing = following
    else:
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise bad_parameter("body", "is not valid JSON: send {\"token\": \"<JWT>\"}") from exc
        token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise bad_parameter("token", "is required: the JWT your identity provider gave you")
    return token.strip(), landing


def _signed_in(principal: Principal, csrf: str) -> dict[str, Any]:
    return {
        "user": principal.user,
        "account_id": principal.account_id,
        "role": principal.role,
        "shared": principal.shared,
        "billing": BILLING_VIEW in permissions(principal),
        "expires_at": principal.expires_at.isoformat().replace("+00:00", "Z"),
        "csrf_token": csrf,
    }


def _set_cookies(response: Response, request: Request, token: str, principal: Principal) -> None:
    secure = request.url.scheme == "https"
    max_age = max(0, int((principal.expires_at - datetime.now(UTC)).total_seconds()))
    common: dict[str, Any] = {"path": "/", "secure": secure, "samesite": "lax", "expires": principal.expires_at}
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, httponly=True, **common)
    response.set_cookie(CSRF_COOKIE, csrf_token(token), max_age=max_age, httponly=False, **common)
