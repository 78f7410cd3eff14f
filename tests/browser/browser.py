"""Debian's Chromium driven by Playwright for Python: how the browser tests start it.

Browser builds cannot be downloaded here, so Playwright never installs one (`playwright install`
is never run): it launches the distribution's ``/usr/bin/chromium`` (``make test`` installs it,
deploy/browser/install-chromium.sh), or ``METERING_TEST_CHROMIUM``. Headless, without the sandbox
when running as root (Chromium refuses otherwise), and without anything that reaches the network
on its own (component updates, sync, background fetches). Playwright gives each launch a fresh
profile (user-data) directory of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from playwright.sync_api import Browser, Playwright

CHROMIUM: Final = os.environ.get("METERING_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS: Final = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
)
LAPTOP: Final = {"width": 1366, "height": 860}
PHONE: Final = {"width": 390, "height": 844}


def launch(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: run `make browser-tools` (Debian's chromium package) "
            "or set METERING_TEST_CHROMIUM to a Chromium binary"
        )
    args = list(FLAGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox does not run as root
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args, timeout=60_000)


def artifacts_dir() -> Path:
    """Where screenshots go: ``METERING_TEST_ARTIFACTS`` or build/test-artifacts/browser in the checkout."""
    base = os.environ.get("METERING_TEST_ARTIFACTS")
    root = Path(base) if base else Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
    path = root / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path
