"""The management service's browser pages: login, logout and HTML views of routes that have one.

Pages are Jinja2 templates (``vmcrypt/templates``, autoescaped) served on the same
Starlette app as the JSON API. A browser logs in with a form (``POST /login``)
and gets the same short-lived session as ``POST /session``, carried in a cookie
that is HttpOnly, SameSite=Strict and, over HTTPS, Secure; the login form has its
own CSRF token (a cookie and a hidden field that must match). Cookies are
accepted only for reading pages (GET); every change still needs the bearer token.

Every HTML answer carries a strict Content-Security-Policy: nothing may load from
anywhere (``default-src 'none'``), the one inline stylesheet runs by a per-response
nonce, forms post only to this origin, and no one may frame the page.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

if TYPE_CHECKING:
    import jinja2

SESSION_COOKIE = "vmcrypt_session"
CSRF_COOKIE = "vmcrypt_login_csrf"
MAX_FORM_BYTES = 8192

_STATUS_CLASS = {"Passed": "passed", "Failed": "failed", "N/A": "na", "Not attested": "not-attested"}



def _when(iso: str) -> str:
    """An ISO 8601 time as people read it: UTC, to the second."""
    try:
        moment = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@functools.cache
def environment() -> "jinja2.Environment":
    """The templates, autoescaped (loaded on the first page: command lines never pay for Jinja2)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vmcrypt", "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default=True),
                             undefined=jinja2.StrictUndefined)
    env.filters["status_class"] = lambda status: _STATUS_CLASS.get(status, "na")
    env.filters["when"] = _when
    return env


def wants_json(request: Request) -> bool:
    """``?format=json`` or an Accept header that asks for JSON before HTML."""
    wanted = request.query_params.get("format", "").lower()
    if wanted:
        return wanted == "json"
    accept = request.headers.get("accept", "")
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for kind in kinds:
        if kind == "application/json":
            return True
        if kind in ("text/html", "application/xhtml+xml"):
            return False
    return False


def security_headers(nonce: str) -> dict[str, str]:
    """The headers of every page: a CSP allowing only styles with ``nonce``, no framing, no sniffing, no referrer and no
    caching."""
    return {
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
                                    "frame-ancestors 'none'; base-uri 'none'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


def render(template: str, status: int = 200, **context: Any) -> Response:
    """An HTML page with the security headers; the stylesheet's nonce is fresh for every answer."""
    nonce = secrets.token_urlsafe(16)
    context.setdefault("user", None)
    body = environment().get_template(template).render(csp_nonce=nonce, **context)
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=security_headers(nonce))


def error_page(status: int, message: str, user: str | None) -> Response:
    """The error page for ``status`` with ``message`` (the page names the logged-in ``user``, if any)."""
    titles = {401: "Login required", 403: "Not allowed", 404: "Not found", 409: "Refused", 422: "Bad request"}
    return render("error.html", status, title=titles.get(status, "Error"), message=message, user=user)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path of this site (no scheme, no other host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/security-report"
    return target


def login_redirect(request: Request) -> Response:
    """A redirect to the login page that returns to the requested path afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303,
                            headers=security_headers(secrets.token_urlsafe(16)))


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def login_form(request: Request, error: str = "", status: int = 200) -> Response:
    """The login page with a new CSRF token (also set as a short-lived cookie)."""
    csrf = secrets.token_urlsafe(32)
    response = render("login.html", status, csrf=csrf, error=error,
                      next=safe_next(request.query_params.get("next")))
    _set_cookie(response, request, CSRF_COOKIE, csrf, 600)
    return response


async def read_form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (small; one value per name)."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise ValueError("the form is too large")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the form is malformed") from None
    return {name: values[0] for name, values in fields.items()}


Authenticate = Callable[[str, str], Awaitable[bool]]
OpenSession = Callable[[str], Awaitable[tuple[str, float]]]


async def login_submit(request: Request, authenticate: Authenticate, open_session: OpenSession,
                       lifetime_seconds: int) -> Response:
    """Check the CSRF token and the password; on success set the session cookie and go on."""
    try:
        form = await read_form(request)
    except ValueError as exc:
        return login_form(request, str(exc), 422)
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), form.get("csrf", "").encode()):
        return login_form(request, "The login form expired: please log in again.", 403)
    user, password = form.get("user", ""), form.get("password", "")
    if not user or not password or not await authenticate(user, password):
        return login_form(request, "Login failed: wrong user name or password.", 401)
    token, _ = await open_session(user)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303,
                                headers=security_headers(secrets.token_urlsafe(16)))
    _set_cookie(response, request, SESSION_COOKIE, token, lifetime_seconds)
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


async def logout(request: Request, close_session: Callable[[str], Awaitable[bool]]) -> Response:
    """End the browser's session and redirect to the login page, dropping the session cookie."""
    await close_session(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303, headers=security_headers(secrets.token_urlsafe(16)))
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
