"""Serving the OpenAPI document at `GET /openapi.json` and Swagger UI at `GET /docs`."""

from __future__ import annotations

import functools
import json
import pathlib

from aiohttp import web

from gateway.envelope import Envelope
from gateway.openapi.document import build_document
from gateway.routes import Route

OPENAPI_JSON = web.AppKey("openapi_json", bytes)

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>FinPulse API</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js"></script>
  <script src="docs/static/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"""


@functools.cache
def swagger_ui_dir() -> pathlib.Path:
    """Swagger UI's assets, as the `swagger-ui-bundle` package ships them (no CDN)."""
    from swagger_ui_bundle import swagger_ui_path

    return pathlib.Path(str(swagger_ui_path))


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of this gateway."""
    return web.Response(body=request.app[OPENAPI_JSON], content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    """Swagger UI on `/openapi.json`."""
    return web.Response(text=DOCS_HTML, content_type="text/html")


async def docs_asset(request: web.Request) -> web.StreamResponse:
    """One of Swagger UI's files (a plain name in `swagger_ui_dir()`; anything else is not found)."""
    name = request.match_info["name"]
    path = swagger_ui_dir() / name
    if name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def setup(app: web.Application, routes: list[Route], envelope: Envelope) -> None:
    """Serve the document of `routes` at `/openapi.json` (built now, once) and Swagger UI at `/docs`,
    through `envelope` like every route of the gateway."""
    app[OPENAPI_JSON] = json.dumps(build_document(routes), ensure_ascii=False).encode()
    envelope.add(app, "GET", "/openapi.json", openapi_json, allow_head=True)
    envelope.add(app, "GET", "/docs", docs, allow_head=True)
    envelope.add(app, "GET", "/docs/static/{name}", docs_asset, allow_head=True)
