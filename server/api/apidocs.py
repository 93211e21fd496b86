"""The interactive API reference at /docs, served without any CDN.

FastAPI's default /docs page loads Swagger UI's script and stylesheet from a CDN, so it is blank
on a machine without internet. Here the same files come from the `swagger-ui-bundle-v2` package
(Swagger UI 5's dist folder, which reads the OpenAPI 3.1 that FastAPI writes; installed with
Caddie) under /docs/assets/. ReDoc, which has no such package, is turned off.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from server.errors import NotFound

ASSETS = Path(swagger_ui_path)
ASSET_URL = "/docs/assets"
SERVED = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "favicon-32x32.png": "image/png"}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def read_api_docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="Caddie API",
                               swagger_js_url=f"{ASSET_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{ASSET_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{ASSET_URL}/favicon-32x32.png")


@router.get(ASSET_URL + "/{name}")
def read_api_docs_asset(name: str) -> FileResponse:
    """One of Swagger UI's files, from the installed package."""
    if name not in SERVED:
        raise NotFound(f"no API docs file {name!r}")
    return FileResponse(ASSETS / name, media_type=SERVED[name])
