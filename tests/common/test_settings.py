from __future__ import annotations

import pytest

from services.common.settings import DatabaseSettings, ServerSettings, SettingsError


def test_service_prefix_wins_over_the_shared_name() -> None:
    environ = {"SIGHTLINE_DB_POOL_SIZE": "7", "SIGHTLINE_INGEST_DB_POOL_SIZE": "3"}
    assert DatabaseSettings.from_env("ingest", environ).pool_size == 3
    assert DatabaseSettings.from_env("query", environ).pool_size == 7
    assert DatabaseSettings.from_env("replay", {}).pool_size == DatabaseSettings.pool_size


def test_ports_are_per_service_only() -> None:
    environ = {"SIGHTLINE_PORT": "9999", "SIGHTLINE_QUERY_PORT": "9002"}
    assert ServerSettings.from_env("ingest", environ).port == 8001
    assert ServerSettings.from_env("query", environ).port == 9002
    assert ServerSettings.from_env("replay", environ).port == 8003


def test_a_bad_number_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="SIGHTLINE_DB_POOL_SIZE must be an integer"):
        DatabaseSettings.from_env("ingest", {"SIGHTLINE_INGEST_DB_POOL_SIZE": "many"})
