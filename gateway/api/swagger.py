"""`/docs`: Swagger UI from the pinned `swagger-ui-bundle-v2` package, served by the gateway itself (no CDN).

Closed government networks block CDNs, so every asset the page loads comes from this gateway, and its
Content-Security-Policy allows nothing else. The page says plainly that it cannot sign requests: see NOTICE.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

router = APIRouter(include_in_schema=False)
ASSET_DIR = Path(str(swagger_ui_path))
SWAGGER_UI_VERSION = ASSET_DIR.name.removeprefix("swagger-ui-")
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# Inline scripts are refused (script-src 'self'); Swagger UI sets inline styles, and shows images as data: URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
NOTICE = (
    "This page documents the API; it cannot sign requests. Every call under /v1 but the public catalog needs an"
    " RFC 9421 signature made with the caller's Ed25519 private key. A key pasted here would sit in a page that"
    " the gateway serves, open to any script that runs in it, while callers' private keys never reach the gateway"
    " at all. Sign with <code>msjx-gateway call …</code> or the Python client <code>gateway.client</code>;"
    " “Try it out” answers for the unsigned routes (<code>GET /v1/catalog</code>, <code>/healthz</code>,"
    " <code>/readyz</code>) and shows the 401 <code>signature_missing</code> problem for the others."
)
INIT_SCRIPT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>msjx-gateway API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<p id="signing-notice" style="margin:0;padding:12px 20px;background:#fff4e5;border-bottom:1px solid #f0c36d;
font:14px/1.5 sans-serif">{NOTICE}</p>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""


@router.get("/docs")
async def docs() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP})


@router.get("/docs/assets/init.js")
async def init_script() -> Response:
    return Response(INIT_SCRIPT, media_type="text/javascript; charset=utf-8")


@router.get("/docs/assets/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:  # only the named files: the path never reaches the file system
        raise HTTPException(404)
    return FileResponse(
        ASSET_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Swagger-UI-Version": SWAGGER_UI_VERSION},
    )
