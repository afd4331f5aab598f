"""The committed bundles are what their sources build to, so `make up` serves the source as it is:
the tracker (tracker/src) and the player's and dashboard's scripts and styles (web/src)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.ingest.tracker_route import TRACKER_BUNDLE
from services.query.pages import STATIC as QUERY_STATIC
from services.replay.pages import STATIC as REPLAY_STATIC

ROOT = Path(__file__).resolve().parents[2]
TRACKER_DIR = ROOT / "tracker"
WEB_DIR = ROOT / "web"


def require_esbuild(project: Path, make_target: str) -> None:
    if not (project / "node_modules" / "esbuild").exists() or shutil.which("node") is None:
        message = f"{project.name}/node_modules or node missing: run `make {make_target}` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_the_committed_bundle_matches_a_fresh_build(tmp_path: Path) -> None:
    require_esbuild(TRACKER_DIR, "tracker-deps")
    fresh = tmp_path / "tracker.js"
    subprocess.run(["node", "build.mjs", f"--outfile={fresh}"], cwd=TRACKER_DIR, check=True, timeout=120)
    assert fresh.read_bytes() == TRACKER_BUNDLE.read_bytes(), (
        "services/ingest/static/tracker.js is stale: run `make tracker` and commit it"
    )


def test_the_committed_page_bundles_match_a_fresh_build(tmp_path: Path) -> None:
    require_esbuild(WEB_DIR, "pages-deps")
    subprocess.run(["node", "build.mjs", f"--outdir={tmp_path}"], cwd=WEB_DIR, check=True, timeout=120)
    committed = {
        path.name: path
        for static in (REPLAY_STATIC, QUERY_STATIC)
        for path in static.iterdir()
        if path.suffix in (".js", ".css")
    }
    assert sorted(committed) == ["dashboard.css", "dashboard.js", "player.css", "player.js"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(committed)
    for name, path in committed.items():
        assert (tmp_path / name).read_bytes() == path.read_bytes(), (
            f"{path.relative_to(ROOT)} is stale: run `make pages` and commit it"
        )
