"""The load generator refuses any target but 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from services.cli.main import cli
from tools.loadtest.hosts import NotLoopbackError, require_loopback
from tools.loadtest.plan import LoadPlan


def test_loopback_urls_are_accepted_without_trailing_slash() -> None:
    assert require_loopback("http://127.0.0.1:8001/") == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:8001",
        "http://10.0.0.5:8001",
        "http://localhost:8001",  # may resolve to ::1 or, through /etc/hosts, anywhere
        "http://127.0.0.1.example.com:8001",
        "http://127.0.0.1@example.com:8001",
        "http://user@127.0.0.1:8001",
        "ftp://127.0.0.1:8001",
        "127.0.0.1:8001",
    ],
)
def test_other_hosts_are_refused(url: str) -> None:
    with pytest.raises(NotLoopbackError):
        require_loopback(url)


def _plan(**changes: Any) -> LoadPlan:
    values: dict[str, Any] = {
        "users": 1234,
        "ramp_up_s": 30,
        "hold_s": 60.5,
        "ramp_down_s": 10,
        "ingest_url": "http://127.0.0.1:9301",
        "query_url": "http://127.0.0.1:9302",
        "replay_url": "http://127.0.0.1:9303",
        "project_key": "pk_a",
        "secret_key": "sk_b",
        "run_dir": "/tmp/run",
    }
    return LoadPlan(**{**values, **changes})


def test_a_plan_aimed_elsewhere_cannot_be_made() -> None:
    with pytest.raises(NotLoopbackError):
        _plan(query_url="http://192.168.1.20:8002")


@pytest.mark.parametrize("option", ["--host", "--query-host", "--replay-host"])
def test_the_command_refuses_a_remote_host_before_doing_anything(option: str, tmp_path: object) -> None:
    result = CliRunner().invoke(cli, ["load", option, "http://203.0.113.7:8001", "--reports-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "only targets http://127.0.0.1" in result.output
    assert list(tmp_path.iterdir()) == []  # type: ignore[attr-defined]


def test_plan_travels_through_the_environment() -> None:
    plan = _plan(shape="steps", steps=4)
    assert LoadPlan.from_env(plan.to_env()) == plan
    assert (plan.readers, plan.noop_users, plan.locust_users) == (2, 62, 1298)
