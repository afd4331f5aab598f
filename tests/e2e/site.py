"""A small website on 127.0.0.1 whose pages embed the tracker, for the browser tests."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGES = Path(__file__).parent / "site"


def tracker_tag(ingest_url: str, project_key: str, extra_attributes: str = "") -> str:
    return f'<script src="{ingest_url}/tracker.js" data-project-key="{project_key}" {extra_attributes} defer></script>'


def read_page(name: str, tag: str) -> str:
    return (PAGES / name).read_text().replace("{{TRACKER}}", tag)


@contextmanager
def serve_site(pages: dict[str, str]) -> Iterator[str]:
    """Serves pages (path -> HTML) on a free port; yields the site's origin."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            page = pages.get(self.path.split("?", 1)[0])
            body = (page if page is not None else "<h1>Not found</h1>").encode()
            self.send_response(200 if page is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class SeenRequest:
    path: str
    body: bytes
    content_encoding: str | None
    status: int | None  # None: the connection was closed without an answer
    at: float = field(default_factory=time.monotonic)


@contextmanager
def serve_site_with_flaky_ingest(
    pages: dict[str, str], ingest_url: str, faults: dict[str, list[int | None]]
) -> Iterator[tuple[str, list[SeenRequest]]]:
    """The site and, on the same origin, a proxy to ingest that fails on purpose.

    faults maps a tracker path to what its first requests get: a status answered without
    reaching ingest (with Retry-After: 1), or None to forward the request to ingest and then
    drop ingest's answer (the request is stored, the browser sees a network error). Later
    requests are forwarded. Yields the origin and the list of POSTs seen, in order.
    """
    seen: list[SeenRequest] = []
    lock = threading.Lock()
    remaining = {path: list(plan) for path, plan in faults.items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            if self.path == "/tracker.js":
                with urllib.request.urlopen(f"{ingest_url}/tracker.js") as response:
                    self._answer(200, response.read(), "text/javascript")
                return
            page = pages.get(self.path.split("?", 1)[0])
            self._answer(200 if page is not None else 404, (page or "Not found").encode(), "text/html; charset=utf-8")

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            # The tracker names its key in the query (?key=pk_...); faults and records go by path.
            path = self.path.split("?", 1)[0]
            with lock:
                plan = remaining.get(path, [])
                fault = plan.pop(0) if plan else 200
            if fault not in (None, 200):
                seen.append(SeenRequest(path, body, self.headers.get("Content-Encoding"), fault))
                self._answer(fault, b'{"error": {"code": "injected", "message": "a test fault"}}', "application/json")
                return
            request = urllib.request.Request(f"{ingest_url}{self.path}", data=body, method="POST")
            for name in ("Content-Type", "Content-Encoding", "Origin", "User-Agent"):
                if self.headers.get(name):
                    request.add_header(name, self.headers[name])
            try:
                with urllib.request.urlopen(request) as response:
                    status, answer = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
            seen.append(SeenRequest(path, body, self.headers.get("Content-Encoding"), status if fault else None))
            if fault is None:
                self.close_connection = True  # ingest stored it; the browser never hears so
                return
            self._answer(status, answer, "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status in (429, 503):
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="flaky-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
