"""Sign in and out: ``POST /login`` turns an identity provider's token into the session cookie.

The cookie holds the token itself (HttpOnly, SameSite=Lax, Secure behind HTTPS, expiring with
the token), so a session ends when the token does and needs no server-side state. The CSRF token
of the session comes back in the answer and in the ``metering_csrf`` cookie (see ``console.deps``).
A form post is answered with a redirect (to ``next``, a path of this site, or ``/console/usage``;
back to ``/login?error=CODE`` when the token is refused: the page shows its own text for the code);
a JSON post (``Content-Type: application/json``, nothing else) with JSON. A sign-in another site's
page sends (``Sec-Fetch-Site`` or ``Origin`` say so) is refused: 403, reason ``cross_site``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from console.auth import AuthError, KeysUnavailableError, Principal
from console.context import ConsoleContext
from console.deps import CSRF_COOKIE, SESSION_COOKIE, console_context, csrf_token, open_router, verify_token
from console.errors import ApiError, bad_parameter, error_response, forbidden, unauthorized
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
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_form = content_type in _FORMS
    if not is_form and not _is_json(content_type):
        error = ApiError(
            415,
            f"Content-Type {content_type or '(none)'} is not accepted: send JSON (application/json) or the login form",
            parameter="Content-Type",
        )
        return error_response(error)
    refused = _cross_site(request)
    if refused is not None:
        return error_response(forbidden("cross_site", refused))
    token, landing = await _read_login(request, is_form)
    try:
        principal = await verify_token(context, token)
    except AuthError as exc:
        if is_form:
            return RedirectResponse(f"/login?{urlencode({'error': exc.code})}", status_code=303)
        return error_response(unauthorized(str(exc)))
    except KeysUnavailableError as exc:
        return error_response(ApiError(503, str(exc), headers={"Retry-After": "10"}))
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


def _is_json(content_type: str) -> bool:
    structured = content_type.startswith("application/") and content_type.endswith("+json")
    return content_type == "application/json" or structured


def _cross_site(request: Request) -> str | None:
    """Why a sign-in comes from another site (login CSRF), or None: ``Sec-Fetch-Site`` and ``Origin`` when sent.

    A page of another site could otherwise post its owner's token here and leave the visitor signed in to the
    attacker's account (what they then enter, they enter there). Browsers send these headers on every POST; a
    client that sends neither (curl, a script) is not a browser another site can drive.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"sign-in from another site is refused (Sec-Fetch-Site: {site}): log in on this console's own page"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        parts = urlsplit(origin)
        if origin == "null" or parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"sign-in from another site is refused (Origin: {origin}): log in on this console's own page"
    return None


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
