"""Response headers that tell browsers what the pages may do.

Every page's scripts and styles are files under /static (the only inline <script> elements
are JSON data blocks, which no policy runs), so the Content-Security-Policy allows only this
site's own files: an injected inline script or event handler does not run, no other site may
frame a page, and forms post only here. /docs and /redoc load their viewers from a CDN with
an inline starter script, so they get FastAPI's pages without the policy.
"""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
          "form-action 'self'")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
API_VIEWERS = frozenset({"/docs", "/redoc"})


class SecurityHeaders:
    """ASGI middleware adding HEADERS, and the policy outside the API viewers, to responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = scope["path"] not in API_VIEWERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if policy:
                    headers.setdefault("Content-Security-Policy", POLICY)
            await send(message)

        await self.app(scope, receive, send_with_headers)
