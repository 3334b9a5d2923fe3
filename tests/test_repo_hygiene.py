"""What is committed: clean notebooks, no artefacts, an executable CI script.

Checks the files git tracks (``git ls-files``), not whatever lies in the work tree, so a
notebook open and executed in JupyterLab does not fail the suite until it is committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_NAME = re.compile(r"^notebooks/(\d\d)_[a-z0-9_]+\.ipynb$")
MAX_FILE_BYTES = 5 * 2**20


def tracked(*patterns: str) -> list[str]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", *patterns], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [p for p in out.split("\0") if p]


def committed_notebooks() -> list[str]:
    return [p for p in tracked("*.ipynb") if p.startswith("notebooks/")]


def test_committed_notebooks_have_no_outputs_or_execution_counts():
    notebooks = committed_notebooks()
    if not notebooks:
        pytest.skip("no notebooks committed yet")
    dirty = []
    for path in notebooks:
        nb = json.loads((REPO_ROOT / path).read_text())
        for index, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            if cell.get("outputs"):
                dirty.append(f"{path}: cell {index} has outputs")
            if cell.get("execution_count") is not None:
                dirty.append(f"{path}: cell {index} has execution_count {cell['execution_count']}")
    assert not dirty, "strip outputs before committing (e.g. jupyter nbconvert --clear-output --inplace):\n" + "\n".join(dirty)


def test_committed_notebooks_are_valid_and_named_in_course_order():
    import nbformat

    notebooks = committed_notebooks()
    if not notebooks:
        pytest.skip("no notebooks committed yet")
    numbers = []
    for path in notebooks:
        match = NOTEBOOK_NAME.match(path)
        assert match, f"{path}: course notebooks are named notebooks/NN_lower_case_name.ipynb"
        numbers.append(match.group(1))
        nb = nbformat.read(REPO_ROOT / path, as_version=4)
        nbformat.validate(nb)
        kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
        assert kernel == "python3", f"{path}: kernelspec {kernel!r}, expected python3 (the course runner's)"
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {sorted(numbers)}"


def test_no_artefacts_are_committed():
    artefacts = [
        p
        for p in tracked("checkpoints", "runs", "test-artifacts", "data/feedback", "data/generated", ".venv")
        if p != "data/feedback/example.jsonl"
    ]
    assert not artefacts, f"generated files are committed (they belong in .gitignore): {artefacts}"


def test_no_large_files_are_committed():
    big = [
        f"{p} ({(REPO_ROOT / p).stat().st_size / 2**20:.1f} MiB)"
        for p in tracked()
        if (REPO_ROOT / p).is_file() and (REPO_ROOT / p).stat().st_size > MAX_FILE_BYTES
    ]
    assert not big, f"files over {MAX_FILE_BYTES // 2**20} MiB are committed: {big}"


def test_ci_script_is_executable_and_runs_the_whole_suite():
    script = REPO_ROOT / ".ci" / "run"
    assert script.exists() and os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text and re.search(r"^\s*make test\b", text, re.M)
