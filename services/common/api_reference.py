"""GET /schema: the API reference as plain HTML rendered here, without any script.

Litestar's Scalar, Swagger and ReDoc pages load their JavaScript from a CDN. /schema is on the
same origin as the dashboard and the player, which keep the project's secret key in
sessionStorage: any script that origin runs can read it, so no third-party script may run
there (and a box without internet would get a blank page). This page is built on the
server from the same OpenAPI document (/schema/openapi.json, which stays), and is served
under a policy that allows no script at all.
"""

from __future__ import annotations

import html
import json
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin

# No script, no outside resource: the page is text and one inline stylesheet.
API_REFERENCE_POLICY = "; ".join(
    (
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_STYLE = """
body { margin: 0 auto; max-width: 1100px; padding: 16px 20px; font: 14px/1.5 system-ui, sans-serif; color: #1d2330; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #e4e7ec; }
.op { border: 1px solid #e4e7ec; border-radius: 8px; padding: 8px 12px; margin: 10px 0; }
.method { display: inline-block; min-width: 64px; font-weight: 700; text-transform: uppercase; }
.path { font-family: ui-monospace, monospace; } .desc { white-space: pre-wrap; color: #344054; }
table { border-collapse: collapse; width: 100%; font-size: 13px; } th, td { text-align: left; padding: 3px 6px;
border-bottom: 1px solid #eef0f3; vertical-align: top; } code, pre { font-family: ui-monospace, monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f7f8fa; padding: 6px; border-radius: 6px; }
"""

_METHODS = ("get", "post", "put", "patch", "delete")


def _text(value: object) -> str:
    return html.escape(str(value or ""))


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " | ".join(_schema_type(option) for option in schema[key])
    kind = schema.get("type", "")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    return str(kind)


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    parts = [
        f"<div class='op' id='{_text(operation.get('operationId', path + method))}'>",
        f"<div><span class='method'>{_text(method)}</span> <span class='path'>{_text(path)}</span></div>",
        f"<p><strong>{_text(operation.get('summary'))}</strong></p>",
    ]
    if operation.get("description"):
        parts.append(f"<div class='desc'>{_text(operation['description'])}</div>")
    parameters = operation.get("parameters") or []
    if parameters:
        rows = "".join(
            f"<tr><td><code>{_text(p.get('name'))}</code></td><td>{_text(p.get('in'))}</td>"
            f"<td>{_text(_schema_type(p.get('schema', {})))}</td><td>{'yes' if p.get('required') else ''}</td>"
            f"<td>{_text(p.get('description'))}</td></tr>"
            for p in parameters
        )
        parts.append(
            "<table><thead><tr><th>Parameter</th><th>In</th><th>Type</th><th>Required</th><th>Description</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    body = operation.get("requestBody", {}).get("content", {})
    for media_type, content in body.items():
        parts.append(f"<p>Body ({_text(media_type)}): {_text(_schema_type(content.get('schema', {})))}</p>")
    responses = operation.get("responses") or {}
    if responses:
        rows = "".join(
            f"<tr><td>{_text(status)}</td><td>{_text(response.get('description'))}</td></tr>"
            for status, response in responses.items()
        )
        parts.append(f"<table><thead><tr><th>Status</th><th>Meaning</th></tr></thead><tbody>{rows}</tbody></table>")
    parts.append("</div>")
    return "".join(parts)


def render_reference(openapi: dict[str, Any], json_path: str) -> str:
    info = openapi.get("info", {})
    sections: list[str] = []
    for path, item in (openapi.get("paths") or {}).items():
        for method in _METHODS:
            if method in item:
                sections.append(_operation(path, method, item[method]))
    schemas = (openapi.get("components") or {}).get("schemas") or {}
    models = "".join(
        f"<h3 id='schema-{_text(name)}'>{_text(name)}</h3><pre>{_text(json.dumps(schema, indent=2))}</pre>"
        for name, schema in schemas.items()
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta name='referrer' content='no-referrer'><link rel='icon' href='data:,'>"
        f"<title>{_text(info.get('title'))} API reference</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_text(info.get('title'))} <small>{_text(info.get('version'))}</small></h1>"
        f"<p class='desc'>{_text(info.get('description'))}</p>"
        f"<p>Machine-readable: <a href='{_text(json_path)}'>OpenAPI document (JSON)</a>.</p>"
        f"<h2>Operations</h2>{''.join(sections)}<h2>Schemas</h2>{models}</body></html>"
    )


class PlainReferencePlugin(OpenAPIRenderPlugin):
    """The reference at /schema (and /schema/reference), rendered on the server; no script runs."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/reference"])

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return render_reference(openapi_schema, self.get_openapi_json_route(request)).encode()
