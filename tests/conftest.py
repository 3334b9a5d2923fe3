"""Shared fixtures of the test suite.

* ``repo_root`` -- the checkout's root folder.
* the ``needs_cxx`` marker -- a test that compiles with ``torch.compile`` on the CPU is
  skipped where no C++ compiler is found (the fall-back without one is tested on its own);
* ``chromium_browser`` -- Debian's Chromium (``/usr/bin/chromium``) driven by Playwright,
  headless. Playwright never downloads a browser of its own here: ``make test`` installs
  Debian's package when it is missing (as root), and without it the browser tests are
  skipped -- or fail under CI (``$CI`` set), where a skipped browser test would hide a
  missing install step.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def pytest_collection_modifyitems(config, items):
    if any(map(shutil.which, ("g++", "c++", "clang++"))):
        return
    skip = pytest.mark.skip(reason="torch.compile on the CPU needs a C++ compiler (the fall-back is tested apart)")
    for item in items:
        if "needs_cxx" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a loaded machine): a module that
    sets ``pytestmark = pytest.mark.usefixtures("one_thread")`` runs on one, and restores the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chromium_browser():
    """A headless Playwright ``Browser`` on Debian's Chromium; closed after the test module.

    Module-scoped (not session-scoped) so that Playwright's event loop is gone before
    other modules run notebooks with nbclient.
    """
    if not os.path.exists(CHROMIUM):
        message = (
            f"{CHROMIUM} is missing: install Debian's package (`apt-get install chromium`, "
            "which `make test` does when run as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Playwright must not fetch a browser build of its own (there is no network for it)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Forget accelerate's process-wide state after each test.

    ``accelerate`` keeps one ``AcceleratorState`` per process; a test that builds a TRL
    trainer (bf16 settings) would otherwise make a later ``Accelerator(mixed_precision="no")``
    fail. accelerate's own test-suite resets it the same way.
    """
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
