"""JupyterLab in a real browser, for the browser tests: a server on a free port, a kernel to wait for.

:func:`jupyterlab` starts JupyterLab on 127.0.0.1 (no token) in ``root`` with ``notebook`` saved
there as ``name`` and stops it afterwards; :func:`wait_for_kernel`, :func:`restart_kernel` and
:func:`run_cells` drive the page as a reader does (Playwright, on the ``chromium_browser`` fixture).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, name: str, cells: list[str]):
    """Yield the URL of ``root/name`` (a notebook of ``cells``) in a JupyterLab started for it."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, root / name)
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".cfg"), "JUPYTER_RUNTIME_DIR": str(root / ".run"),
           "PYTHONPATH": str(REPO)}
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--IdentityProvider.token=",
         "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
    try:
        yield f"{url}/lab/tree/{name}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_for_kernel(page, timeout_ms=120_000):
    """Wait until a kernel is attached and idle (the status reads 'idle' before one is attached)."""
    page.wait_for_function(
        """() => {
            const name = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName, '
                                                + '.jp-NotebookPanel-toolbar [data-jp-item-name="kernelName"]');
            if (!name) return false;
            const text = name.textContent.trim();
            if (!text || text.includes('No Kernel')) return false;
            const status = document.querySelector('.jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator');
            return !status || (status.getAttribute('data-status') || 'idle') === 'idle';
        }""", timeout=timeout_ms)


def open_notebook(page, url: str) -> None:
    """Open the notebook, wait for its kernel, dismiss the "Jupyter news?" toast if shown."""
    page.goto(url)
    wait_for_kernel(page)
    news = page.get_by_role("button", name="No", exact=True)
    if news.count():
        news.first.click()


def run_first_cell(page) -> None:
    """Select the first cell and run it (Shift+Enter); the focus moves to the next cell."""
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Escape")          # command mode, on the cell
    page.keyboard.press("Shift+Enter")


def restart_kernel(page) -> None:
    """Kernel → Restart Kernel…, accepted; returns once the new kernel is idle."""
    page.get_by_role("menuitem", name="Kernel").click()
    page.get_by_role("menuitem", name="Restart Kernel…").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.wait_for_timeout(1500)
    wait_for_kernel(page)
