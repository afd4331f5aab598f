from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.settings import (
    DatabaseSettings,
    LogSettings,
    ServerSettings,
    SettingsError,
    StackSettings,
    load_settings,
    setting,
)


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


def test_each_setting_is_parsed_as_its_default_type() -> None:
    @dataclass(frozen=True)
    class Example:
        enabled: bool = setting("ENABLED", True)
        ratio: float = setting("RATIO", 0.5)
        names: tuple[str, ...] = setting("NAMES", ())
        folder: Path = setting("FOLDER", Path("/srv"))
        label: str = setting("LABEL", "x")
        untouched: int = 3

    environ = {
        "SIGHTLINE_ENABLED": "off",
        "SIGHTLINE_RATIO": "2",
        "SIGHTLINE_NAMES": " a, ,b ",
        "SIGHTLINE_FOLDER": "/d",
    }
    assert load_settings(Example, "ingest", environ) == Example(False, 2.0, ("a", "b"), Path("/d"), "x", 3)
    assert load_settings(Example, "ingest", {"SIGHTLINE_INGEST_ENABLED": "yes"}).enabled is True
    assert load_settings(Example, None, {}, ratio=0.25).ratio == 0.25


def test_the_stack_resolves_its_data_directory_and_logs_name_their_level_in_capitals(tmp_path: Path) -> None:
    assert StackSettings.from_env({"SIGHTLINE_DATA_DIR": str(tmp_path / "x" / ".." / "d")}).data_dir == tmp_path / "d"
    assert LogSettings.from_env("query", {"SIGHTLINE_QUERY_LOG_LEVEL": "debug"}).level == "DEBUG"
