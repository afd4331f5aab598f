"""The committed tracker bundle is what tracker/src builds to, so `make up` serves the source as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.ingest.tracker_route import TRACKER_BUNDLE

TRACKER_DIR = Path(__file__).resolve().parents[2] / "tracker"


def test_the_committed_bundle_matches_a_fresh_build(tmp_path: Path) -> None:
    if not (TRACKER_DIR / "node_modules" / "esbuild").exists() or shutil.which("node") is None:
        message = "tracker/node_modules or node missing: run `make tracker-deps` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    fresh = tmp_path / "tracker.js"
    subprocess.run(["node", "build.mjs", f"--outfile={fresh}"], cwd=TRACKER_DIR, check=True, timeout=120)
    assert fresh.read_bytes() == TRACKER_BUNDLE.read_bytes(), (
        "services/ingest/static/tracker.js is stale: run `make tracker` and commit it"
    )
