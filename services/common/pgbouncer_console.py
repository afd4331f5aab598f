"""Reads PgBouncer's admin console (SHOW POOLS, SHOW STATS, ...) for status and load reports.

The console speaks only the simple query protocol, so this uses psycopg's client-side
cursor rather than asyncpg.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

ConsoleView = Literal["POOLS", "STATS", "CLIENTS", "SERVERS", "DATABASES", "CONFIG"]


def show(console_url: str, view: ConsoleView, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    with (
        psycopg.connect(
            console_url,
            autocommit=True,
            connect_timeout=max(1, int(timeout_s)),
            cursor_factory=psycopg.ClientCursor,
        ) as connection,
        connection.cursor(row_factory=dict_row) as cursor,
    ):
        cursor.execute(f"SHOW {view}")  # view is one of a fixed set of literals
        return list(cursor.fetchall())
