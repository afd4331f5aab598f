"""The batch's JSON travels as a dollar-quoted literal; nothing in it may end the literal."""

from __future__ import annotations

import pytest

from services.ingest.repository import _dollar_quoted


@pytest.mark.parametrize(
    "document",
    ['[{"a": "plain"}]', '["$rows$"]', '["x"] $rows', "$rows", '["$rows_", "$$"]', ""],
)
def test_the_literal_closes_only_at_its_own_end(document: str) -> None:
    quoted = _dollar_quoted(document)
    tag = quoted[: quoted.index("$", 1) + 1]
    assert quoted == f"{tag}{document}{tag}"
    # Postgres ends a dollar-quoted string at the first closing tag after the opening one.
    assert quoted.index(tag, len(tag)) == len(quoted) - len(tag)
