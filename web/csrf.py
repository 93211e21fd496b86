"""Cross-site request forgery protection for the pages' forms: a signed double-submit token.

Every page sets a cookie `caddie_csrf` holding `nonce.signature` (HMAC-SHA256 of the nonce
under the server's key) when the browser has no valid one, and every form carries the same
token in a hidden field. A POST is accepted only when the field equals the cookie and the
signature holds: another site can make a browser send the cookie, but can neither read it
nor forge a token the key did not sign. The cookie is SameSite=Strict as a second fence.

The key is `CADDIE_DATA_DIR/csrf.key` (32 random bytes, created on first use, mode 0600),
so every server process of one deployment shares it.
"""

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import Form, Request
from markupsafe import Markup
from starlette.responses import Response

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


def _sign(nonce: str) -> str:
    key = _key(get_settings().data_dir.resolve() / KEY_FILE)
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()


def _valid(token: str | None) -> bool:
    if not token or token.count(".") != 1:
        return False
    nonce, signature = token.split(".")
    return hmac.compare_digest(_sign(nonce), signature)


def token_for(request: Request) -> str:
    """The token this page's forms carry: the browser's own if valid, else a fresh one
    (`set_cookie` then sends it)."""
    if not hasattr(request.state, "csrf_token"):
        cookie = request.cookies.get(COOKIE)
        if _valid(cookie):
            request.state.csrf_token, request.state.csrf_new = cookie, False
        else:
            nonce = secrets.token_urlsafe(18)
            request.state.csrf_token, request.state.csrf_new = f"{nonce}.{_sign(nonce)}", True
    return str(request.state.csrf_token)


def set_cookie(request: Request, response: Response) -> None:
    """Send the token's cookie if this request made a new one."""
    if getattr(request.state, "csrf_new", False):
        response.set_cookie(COOKIE, request.state.csrf_token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")


def hidden_field(request: Request) -> Markup:
    """`<input type="hidden" name="csrf_token" value="...">` for a page's form."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(FIELD, token_for(request))


def verify(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    """Dependency of every page POST: 403 unless the form's token matches the signed cookie."""
    cookie = request.cookies.get(COOKIE)
    if not (_valid(cookie) and cookie is not None and hmac.compare_digest(cookie, csrf_token)):
        raise CsrfRejected("The form's security token is missing or out of date: reload the "
                           "page and send the form again.")
