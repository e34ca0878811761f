"""A real browser for the console's tests: Playwright (PyPI) driving Debian's ``chromium`` package.

Found at ``FLUX_TEST_CHROMIUM`` or as ``chromium`` on the PATH. Missing, the browser tests skip with a
clear message on a developer's machine, and fail under CI (``CI=true`` or ``FLUX_TEST_CHROMIUM`` set),
as the PostgreSQL tests do. Screenshots go to ``FLUX_SCREENSHOT_DIR`` (default ``build/screenshots``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

CHROMIUM_REQUIRED = bool(os.environ.get("FLUX_TEST_CHROMIUM")) or os.environ.get("CI") == "true"
SCREENSHOTS = Path(os.environ.get("FLUX_SCREENSHOT_DIR") or REPO_ROOT / "build" / "screenshots")


def chromium_path() -> str:
    """The Chromium executable, or a skip (a failure under CI) saying how to get one."""
    found = os.environ.get("FLUX_TEST_CHROMIUM") or shutil.which("chromium")
    if found and Path(found).exists():
        return found
    message = "no Chromium for the browser tests: apt-get install chromium (or set FLUX_TEST_CHROMIUM)"
    if CHROMIUM_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (as root, it needs ``--no-sandbox``)."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright  # only for the browser tests

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


AXE = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"


def axe_script() -> Path:
    """axe-core's script (``npm ci``, package.json), or a skip (a failure under CI)."""
    if AXE.is_file():
        return AXE
    message = f"no axe-core at {AXE}: run `npm ci` (make install does) for the accessibility checks"
    if CHROMIUM_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def accessibility_violations(page: Any) -> list[str]:
    """axe-core's WCAG 2 A/AA violations on the page (its context must bypass the page's CSP: the
    console allows no injected script, rightly)."""
    page.add_script_tag(path=str(axe_script()))
    found = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})).violations"
        ".map(v => v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')')"
    )
    return list(found)


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as ``<name>.png`` for people to look at; its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target
