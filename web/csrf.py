"""Cross-site request forgery protection for the pages' forms: a signed double-submit token.

Every page sets a cookie `caddie_csrf` holding `nonce.expiry.signature` when the browser has
no valid one, and every form carries the same token in a hidden field. The signature is
HMAC-SHA256 under the server's key of the nonce, the expiry (Unix seconds, now +
CADDIE_CSRF_TTL_S) and the sha256 of the browser's sign-in cookie, so a token is bound to
one signed-in session: it fails with another user's cookie, after sign-out, and once
expired. A POST is accepted only when the field equals the cookie and the signature holds:
another site can make a browser send the cookie, but can neither read it nor forge a token
the key did not sign. The cookie is SameSite=Strict as a second fence.

The key is `CADDIE_DATA_DIR/csrf.key` (32 random bytes, created on first use, mode 0600),
so every server process of one deployment shares it.
"""

import hashlib
import hmac
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import Form, Request
from markupsafe import Markup
from starlette.responses import Response

from server.api.deps import TOKEN_COOKIE
from server.config import get_settings
from server.errors import CaddieError

COOKIE = "caddie_csrf"
FIELD = "csrf_token"
KEY_FILE = "csrf.key"


class CsrfRejected(CaddieError):
    status_code = 403


@lru_cache
def _key(path: Path) -> bytes:
    """The key in `path`, made first if missing. Written to a temporary file and linked into
    place, so a process racing this one never reads a half-written key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(32))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first; use theirs
        finally:
            temporary.unlink()
    return path.read_bytes()


def _sign(request: Request, nonce: str, expiry: int) -> str:
    key = _key(get_settings().data_dir.resolve() / KEY_FILE)
    signed_in = hashlib.sha256(request.cookies.get(TOKEN_COOKIE, "").encode()).hexdigest()
    return hmac.new(key, f"{nonce}.{expiry}.{signed_in}".encode(), hashlib.sha256).hexdigest()


def _valid(request: Request, token: str | None) -> bool:
    if not token or token.count(".") != 2:
        return False
    nonce, expiry, signature = token.split(".")
    if not expiry.isdigit() or int(expiry) < time.time():
        return False
    return hmac.compare_digest(_sign(request, nonce, int(expiry)), signature)


def _new_token(request: Request) -> str:
    nonce, expiry = secrets.token_urlsafe(18), int(time.time() + get_settings().csrf_ttl_s)
    return f"{nonce}.{expiry}.{_sign(request, nonce, expiry)}"


def token_for(request: Request) -> str:
    """The token this page's forms carry: the browser's own if valid for its session and
    not within a tenth of its life of expiring, else a fresh one (`set_cookie` sends it)."""
    if not hasattr(request.state, "csrf_token"):
        cookie = request.cookies.get(COOKIE)
        if _valid(request, cookie) and not _expiring(cookie):
            request.state.csrf_token, request.state.csrf_new = cookie, False
        else:
            request.state.csrf_token, request.state.csrf_new = _new_token(request), True
    return str(request.state.csrf_token)


def _expiring(token: str | None) -> bool:
    expiry = int(str(token).split(".")[1])
    return expiry - time.time() < get_settings().csrf_ttl_s / 10


def set_cookie(request: Request, response: Response) -> None:
    """Send the token's cookie if this request made a new one."""
    if getattr(request.state, "csrf_new", False):
        response.set_cookie(COOKIE, request.state.csrf_token, httponly=True, samesite="strict",
                            max_age=int(get_settings().csrf_ttl_s),
                            secure=request.url.scheme == "https", path="/")


def hidden_field(request: Request) -> Markup:
    """`<input type="hidden" name="csrf_token" value="...">` for a page's form."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(FIELD, token_for(request))


def verify(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    """Dependency of every page POST: 403 unless the form's token matches the signed cookie."""
    cookie = request.cookies.get(COOKIE)
    if not (_valid(request, cookie) and cookie is not None and hmac.compare_digest(cookie, csrf_token)):
        raise CsrfRejected("The form's security token is missing or out of date: reload the "
                           "page and send the form again.")
