"""Which read endpoints a dashboard or replay reader calls: those a service publishes in its OpenAPI."""

from __future__ import annotations

import json
from typing import Any

ReaderCall = tuple[str, str, str, bytes | None]


def readable_endpoints(service: str, base: str, document: dict[str, Any]) -> list[ReaderCall]:
    """GETs under /v1 without path or required query parameters, and POSTs whose body has an example."""
    calls: list[ReaderCall] = []
    for path, operations in sorted(document.get("paths", {}).items()):
        if not path.startswith("/v1/") or "{" in path:
            continue
        for method, operation in operations.items():
            parameters = operation.get("parameters", [])
            if any(parameter.get("required") for parameter in parameters):
                continue
            if method == "get":
                calls.append(("GET", f"{base}{path}", f"GET {service} {path}", None))
            elif method == "post":
                content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                example = content.get("example")
                if example is None and content.get("examples"):
                    example = next(iter(content["examples"].values())).get("value")
                if example is not None:
                    calls.append(("POST", f"{base}{path}", f"POST {service} {path}", json.dumps(example).encode()))
    return calls
