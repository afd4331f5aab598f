"""A small website on 127.0.0.1 whose pages embed the tracker, for the browser tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
