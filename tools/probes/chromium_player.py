"""Plays a stored recording's frames in headless Chromium with the README's reader.

Starts a throwaway database and the replay service (as `make bench-replay` does), stores a
3-minute session, and serves a page on a small same-origin proxy that runs the JavaScript
reader from README.md ("A player reads frames like this") against
`GET /v1/sessions/{id}/recording` with `Accept: application/vnd.sightline.replay-chunks`,
once from the start and once with `from=60000`. Prints what the browser decoded next to what
was stored.

    python -m tools.probes.chromium_player     (needs /usr/bin/chromium)
"""

from __future__ import annotations

import asyncio
import html
import http.client
import http.server
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import ClassVar

from services.cli import admin
from services.cli.throwaway import throwaway_database
from tools.bench.replay import generate_session, replay_server, store_session

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_reader() -> str:
    match = re.search(r"```js\n(async function\* chunks.*?)```", README.read_text(), re.S)
    if match is None:
        raise RuntimeError("README.md has no frame reader snippet")
    return match.group(1)


def page(secret_key: str, session_id: str) -> bytes:
    script = readme_reader() + (
        """
(async () => {
  const result = {};
  for (const [name, query] of [["whole", ""], ["from60s", "?from=60000"]]) {
    const response = await fetch(`/v1/sessions/SESSION/recording${query}`, {
      headers: { Authorization: "Bearer SECRET", Accept: "application/vnd.sightline.replay-chunks" },
    });
    const seqs = []; let events = 0;
    for await (const body of chunks(response)) { seqs.push(body.seq); events += body.events.length; }
    result[name] = { seqs, events, startOffsetMs: response.headers.get("x-replay-start-offset-ms") };
  }
  document.getElementById("out").textContent = JSON.stringify(result);
})().catch((error) => { document.getElementById("out").textContent = "ERROR " + error; });
""".replace("SESSION", session_id).replace("SECRET", secret_key)
    )
    return f"<!doctype html><body><pre id=out>pending</pre><script>{script}</script>".encode()


def serve_page_and_proxy(page_body: bytes, replay_port: int) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        forwarded: ClassVar[tuple[str, ...]] = ("authorization", "accept")

        def do_GET(self) -> None:
            if self.path == "/":
                self._answer(200, {"Content-Type": "text/html"}, page_body)
                return
            if not self.path.startswith("/v1/"):
                self.send_error(404)
                return
            upstream = http.client.HTTPConnection("127.0.0.1", replay_port, timeout=30)
            headers = {name: value for name, value in self.headers.items() if name.lower() in self.forwarded}
            upstream.request("GET", self.path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
            copied = {
                name: value
                for name, value in response.getheaders()
                if name.lower() in ("content-type", "x-replay-start-offset-ms", "x-replay-chunk-count")
            }
            self._answer(response.status, copied, body)
            upstream.close()

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="sightline-player-probe-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with throwaway_database(root) as db:
            project = asyncio.run(
                admin.create_project(db.admin, name="probe", domains=["shop.example"], timezone="UTC")
            )
            stored = generate_session(random.Random(7), "probe-3min", 3, str(project["publicKey"]))
            asyncio.run(store_session(db.admin, int(str(project["id"])), "probe-3min", stored))
            with replay_server(db.service_url, root / "replay.log") as (port, _):
                proxy = serve_page_and_proxy(page(str(project["secretKey"]), "probe-3min"), port)
                try:
                    dom = subprocess.run(
                        [
                            "chromium",
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--virtual-time-budget=20000",
                            "--dump-dom",
                            f"http://127.0.0.1:{proxy.server_address[1]}/",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=120,
                        check=True,
                    ).stdout
                finally:
                    proxy.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    decoded = html.unescape(dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0])
    print("stored:", json.dumps({"seqs": [c.seq for c in stored], "events": sum(c.event_count for c in stored)}))
    print("chromium decoded:", decoded)


if __name__ == "__main__":
    main()
