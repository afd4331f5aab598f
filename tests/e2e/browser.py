"""Debian's Chromium under Selenium, with nothing downloaded: the driver and browser paths are
given, so Selenium Manager is never asked to fetch either."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Chromium must not reach out: no QUIC probes, background fetches, component or sync updates.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)

T = TypeVar("T")


@cache
def desktop_user_agent() -> str:
    """Chromium's own User-Agent without "Headless".

    Headless Chromium says "HeadlessChrome", which ingest rightly flags as a bot; the test
    visitor should look like the person it stands for. A DevTools override would miss the
    beacons sent while a page unloads, so the flag is set at start.
    """
    version = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, check=True).stdout
    major = re.search(r"(\d+)\.\d+\.\d+\.\d+", version)
    if major is None:
        raise RuntimeError(f"cannot read Chromium's version from {version!r}")
    return (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major.group(1)}.0.0.0 Safari/537.36"
    )


def require_chromium() -> None:
    """Skip without Chromium on a developer's machine; under CI its absence is a failure."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium(log_path: Path, preferences: dict[str, object] | None = None) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium (own profile directory), quit and cleaned up afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="sightline-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--user-agent={desktop_user_agent()}"):
        options.add_argument(flag)
    if preferences:
        options.add_experimental_option("prefs", preferences)
    # The console's messages, for driver.get_log("browser") (CSP violations are reported there).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER), log_output=str(log_path)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T], timeout_s: float = 20) -> T:
    """Polls condition until it is truthy; the timeout is a guard against hanging, not a measurement."""
    result: T = WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)
    return result


def tracker_ready(driver: webdriver.Chrome) -> bool:
    return bool(driver.execute_script("return !!(window.sightline && window.sightline.track)"))


def console_problems(driver: webdriver.Chrome) -> list[str]:
    """Console errors and warnings since the last call (Chromium reports CSP violations as errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
