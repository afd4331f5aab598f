"""Why recordings are not sent as `Content-Encoding: gzip` over concatenated stored gzip members.

Serves three gzip members concatenated (a valid gzip stream, RFC 1952 section 2.2) on
127.0.0.1 and asks Debian's headless Chromium to read them three ways:

- as an HTTP body with `Content-Encoding: gzip` (the browser's own decoder);
- through one `DecompressionStream("gzip")` over the whole body;
- through one `DecompressionStream("gzip")` per member, as the frame format lets a player do.

    python -m tools.probes.chromium_gzip     (needs /usr/bin/chromium)

Chromium 156 printed: the HTTP decoder returned only the first member, silently (its
GzipSourceStream ignores bytes after the first member's trailer); the single
DecompressionStream failed with a TypeError; per-member decoding returned everything.
"""

from __future__ import annotations

import gzip
import http.server
import json
import subprocess
import threading
from typing import ClassVar

MEMBERS = [gzip.compress(f'{{"seq":{seq}}}\n'.encode()) for seq in range(3)]
BODY = b"".join(MEMBERS)
PAGE = b"""<!doctype html><body><pre id=out>pending</pre><script>
(async () => {
  const result = {};
  result.contentEncodingGzip = await (await fetch('/content-encoding')).text();
  const raw = await (await fetch('/raw')).arrayBuffer();
  const inflate = (bytes) =>
    new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'))).text();
  try { result.oneDecompressionStream = await inflate(raw); }
  catch (error) { result.oneDecompressionStream = 'ERROR ' + error; }
  const sizes = await (await fetch('/sizes')).json();
  let offset = 0; const parts = [];
  for (const size of sizes) { parts.push(await inflate(raw.slice(offset, offset + size))); offset += size; }
  result.oneDecompressionStreamPerMember = parts.join('');
  document.getElementById('out').textContent = JSON.stringify(result);
})();
</script>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[str, str | None, bytes]]] = {
        "/": ("text/html", None, PAGE),
        "/content-encoding": ("application/x-ndjson", "gzip", BODY),
        "/raw": ("application/octet-stream", None, BODY),
        "/sizes": ("application/json", None, json.dumps([len(member) for member in MEMBERS]).encode()),
    }

    def do_GET(self) -> None:
        if self.path not in self.routes:
            self.send_error(404)
            return
        content_type, encoding, body = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=5000",
                "--dump-dom",
                f"http://127.0.0.1:{server.server_address[1]}/",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    finally:
        server.shutdown()
    version = subprocess.run(["chromium", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    expected = "".join(gzip.decompress(member).decode() for member in MEMBERS)
    result = json.loads(page[page.index("<pre") :].split(">", 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    print(version)
    print(json.dumps({"expected": expected, **result}, indent=2))


if __name__ == "__main__":
    main()
