"""Stalled and trickling uploads against ingest served by Granian, as `sightline up` runs it.

Granian hands the app a request as soon as its headers are in, so what a stalled body holds
depends on the app: these tests need the real server, not the in-process test client.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from tests.harness import DatabaseHarness

GRACE_S = 3.0
STALLED = 200


@pytest.fixture(scope="module")
def ingest_url(db: DatabaseHarness) -> Iterator[str]:
    with db.serve(
        "ingest",
        "hostile-slow-uploads",
        INGEST_WORKERS="1",
        # Few slots, so that 200 stalled bodies would take every one of them if they could.
        INGEST_MAX_CONCURRENT_REQUESTS="4",
        INGEST_BODY_GRACE_S=str(GRACE_S),
    ) as ingest:
        yield ingest.url


def stalled_upload(url: str, first_bytes: bytes = b"{") -> socket.socket:
    """Headers for a 500 kB body, then only first_bytes of it."""
    parts = urlsplit(url)
    connection = socket.create_connection((parts.hostname, parts.port))
    connection.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500000\r\n\r\n" + first_bytes
    )
    return connection


def read_answer(connection: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or timeout_s passes)."""
    connection.settimeout(timeout_s)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    return received


def honest_batch(project: dict[str, Any]) -> bytes:
    return msgspec.json.encode(
        {
            "projectKey": project["publicKey"],
            "events": [
                {
                    "event": "pageview",
                    "distinctId": "visitor-1",
                    "sessionId": "session-1",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "url": "https://example.com/",
                }
            ],
        }
    )


def test_stalled_uploads_hold_no_slot_and_get_408_within_their_deadline(
    ingest_url: str, project: dict[str, Any]
) -> None:
    started = time.monotonic()
    stalled = [stalled_upload(ingest_url) for _ in range(STALLED)]
    try:
        with httpx.Client(base_url=ingest_url, timeout=30) as client:
            honest = client.post(
                "/v1/events", content=honest_batch(project), headers={"Content-Type": "application/json"}
            )
        assert honest.status_code == 202, honest.text
        assert honest.json() == {"accepted": 1}
        # Answered while every stalled upload was still waiting for its deadline: it did not
        # wait behind them.
        readable, _, _ = select.select(stalled, [], [], 0)
        assert readable == []
        assert time.monotonic() - started < GRACE_S

        answers = [read_answer(connection, GRACE_S + 10) for connection in stalled]
        finished = time.monotonic() - started
    finally:
        for connection in stalled:
            connection.close()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert msgspec.json.decode(body)["error"]["code"] == "request_timeout"
    # read_answer returned because the server closed each connection, well before its timeout.
    assert finished < GRACE_S + 10


def test_a_trickling_upload_is_refused_once_it_falls_behind_the_minimum_rate(ingest_url: str) -> None:
    connection = stalled_upload(ingest_url)
    started = time.monotonic()
    try:
        # A byte a second stays connected and never idle for long, and is still far too slow.
        for _ in range(int(GRACE_S) + 2):
            try:
                connection.sendall(b" ")
            except OSError:
                break  # already answered and closed
            readable, _, _ = select.select([connection], [], [], 1.0)
            if readable:
                break
        answer = read_answer(connection, 10)
    finally:
        connection.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < GRACE_S + 5


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(ingest_url: str) -> None:
    parts = urlsplit(ingest_url)
    with socket.create_connection((parts.hostname, parts.port)) as connection:
        connection.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = read_answer(connection, 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert msgspec.json.decode(body)["error"]["code"] == "payload_too_large"
