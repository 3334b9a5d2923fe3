"""The course runner (rlhf_utils.course), on tiny throwaway notebooks made in tmp_path.

Each kernel start costs a second or two, so the end-to-end tests share a few notebooks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from rlhf_utils import course
from rlhf_utils.course import NotebookRun, check_scale, format_summary, run_notebook, select_notebooks
from rlhf_utils.report import REPORT_ENV, report

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_notebook(path: Path, *sources: str) -> Path:
    """A notebook whose cells are a markdown title then one code cell per source."""
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), *(new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


GOOD_CELLS = (
    "import os, sys\nimport numpy as np\nfrom rlhf_utils.report import report",
    "report(initial_loss=6.0, final_loss=np.float32(2.5))",
    "report(final_loss=2.0, scale=os.environ['RLHF_SCALE'], cwd=os.getcwd(), python=sys.executable,\n"
    "       extra=os.environ.get('EXTRA_VAR', ''))",
)
BAD_CELLS = ("a = 1", "1 / 0", "b = 2")


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhf_utils.course", "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --------------------------------------------------------------------------------------
# report()
# --------------------------------------------------------------------------------------


def test_report_merges_figures_into_the_report_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "figures.json"
    monkeypatch.setenv(REPORT_ENV, str(target))
    report(a=1, b=np.float64(0.5))
    report(b=2.5, curve=np.arange(3), name="x", flag=np.bool_(True))
    assert json.loads(target.read_text()) == {"a": 1, "b": 2.5, "curve": [0, 1, 2], "name": "x", "flag": True}
    shown = capsys.readouterr().out
    assert "curve" in shown and "2.5" in shown  # outside IPython it prints a table


def test_report_without_the_env_only_displays(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(REPORT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    report(x=1.23456789)
    assert "1.235" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_report_converts_tensors_and_rejects_objects(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    target = tmp_path / "f.json"
    monkeypatch.setenv(REPORT_ENV, str(target))
    report(loss=torch.tensor(1.5), pair=torch.tensor([1, 2]))
    assert json.loads(target.read_text()) == {"loss": 1.5, "pair": [1, 2]}
    with pytest.raises(TypeError, match="report\\(model=...\\)"):
        report(model=object())


# --------------------------------------------------------------------------------------
# Selecting notebooks, scales, the summary table
# --------------------------------------------------------------------------------------


NAMES = [Path(f"/nb/{n}.ipynb") for n in ("01_language_models", "02_reinforcement_learning", "03_supervised_finetuning")]


@pytest.mark.parametrize(
    "only, expected",
    [
        ("01,03", ["01_language_models", "03_supervised_finetuning"]),
        ("3,1", ["01_language_models", "03_supervised_finetuning"]),  # course order kept
        ("reinforcement_learning", ["02_reinforcement_learning"]),
        ("02_reinforcement_learning.ipynb, 02", ["02_reinforcement_learning"]),
        (None, ["01_language_models", "02_reinforcement_learning", "03_supervised_finetuning"]),
    ],
)
def test_select_notebooks(only, expected):
    assert [p.stem for p in select_notebooks(NAMES, only)] == expected


def test_select_unknown_notebook_lists_what_exists():
    with pytest.raises(ValueError) as err:
        select_notebooks(NAMES, "01,ppo")
    message = str(err.value)
    assert "'ppo'" in message and "01_language_models, 02_reinforcement_learning" in message
    assert "\n" not in message


def test_check_scale():
    assert check_scale(" Quick ") == "quick"
    with pytest.raises(ValueError, match="unknown scale 'huge': use one of quick, full"):
        check_scale("huge")


def test_scales_match_config():
    config = pytest.importorskip("rlhf_utils.config")
    assert course.SCALES == config.SCALES


def test_format_summary_shows_each_notebook_and_its_figures():
    runs = [
        NotebookRun("01_a", "/x/01_a.ipynb", status="ok", figures={"final_loss": 2.0}, wall_s=75.0, peak_rss_mb=812.0),
        NotebookRun("02_b", "/x/02_b.ipynb", status="failed", failed_cell=4, wall_s=3.0),
        NotebookRun("03_c", "/x/03_c.ipynb"),
    ]
    text = format_summary(runs, width=80)
    assert "final_loss=2" in text and "1m15s" in text and "812 MiB" in text
    assert "failed at cell 4" in text and "not run" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_importing_the_package_and_runner_stays_light():
    code = "import sys, rlhf_utils, rlhf_utils.course, rlhf_utils.report; print(sorted({'torch', 'nbclient', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------
# run_notebook(): real kernels
# --------------------------------------------------------------------------------------


def test_run_notebook_collects_figures_and_writes_outputs(tmp_path):
    nb = write_notebook(tmp_path / "nbs" / "01_tiny.ipynb", *GOOD_CELLS)
    run = run_notebook(nb, "full", tmp_path / "out", env={"EXTRA_VAR": "seen"}, progress=False)
    assert run.ok, run.describe_failure()
    assert run.figures == {
        "initial_loss": 6.0,
        "final_loss": 2.0,  # the later report() replaced the earlier value
        "scale": "full",  # RLHF_SCALE reached the kernel
        "cwd": str(nb.parent),  # the kernel runs in the notebook's folder
        "python": sys.executable,  # ... on this interpreter
        "extra": "seen",
    }
    assert (run.cells_total, run.cells_done, run.failed_cell) == (3, 3, None)
    assert run.wall_s > 0 and run.peak_rss_mb is not None and run.peak_rss_mb > 10
    executed = nbformat.read(run.executed_path, as_version=4)
    assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1, 2, 3]
    assert "final_loss" in Path(run.html_path).read_text()
    assert not (nb.parent / "01_tiny.figures.json").exists()  # nothing written beside the source


def test_run_notebook_reports_the_failing_cell_and_keeps_the_partial_notebook(tmp_path):
    nb = write_notebook(tmp_path / "02_boom.ipynb", *BAD_CELLS)
    run = run_notebook(nb, "quick", tmp_path / "out", progress=False)
    assert run.status == "failed"
    assert run.failed_cell == 2 and run.cells_done == 1  # cell 0 is the markdown title
    assert "CellExecutionError" in run.error and "ZeroDivisionError" in run.error
    assert "\x1b[" not in run.error  # no terminal colours in summary.json
    executed = nbformat.read(run.executed_path, as_version=4)
    assert executed.cells[2].outputs[0].ename == "ZeroDivisionError"
    assert executed.cells[3].get("execution_count") is None  # the run stopped there
    assert "02_boom failed at cell 2" in run.describe_failure()


def test_run_notebook_times_out_instead_of_hanging(tmp_path):
    nb = write_notebook(tmp_path / "03_slow.ipynb", "import time\ntime.sleep(60)")
    run = run_notebook(nb, "quick", tmp_path / "out", timeout=2, progress=False)
    assert run.status == "failed" and run.failed_cell == 1
    assert "Timeout" in run.error and run.wall_s < 40


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


def test_cli_runs_in_order_and_writes_summary(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_first.ipynb", *GOOD_CELLS)
    write_notebook(nbs / "02_second.ipynb", "from rlhf_utils.report import report\nreport(answer=42)")
    write_notebook(nbs / "notes.ipynb", "1 / 0")  # not NN_name: not part of the course
    out = tmp_path / "out"
    result = run_cli("--notebooks", str(nbs), "--out", str(out), "--scale", "quick")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scale"] == "quick"
    assert [n["name"] for n in summary["notebooks"]] == ["01_first", "02_second"]
    first, second = summary["notebooks"]
    assert first["status"] == "ok" and first["figures"]["final_loss"] == 2.0
    assert second["figures"] == {"answer": 42}
    assert first["wall_s"] > 0 and first["peak_rss_mb"] > 0
    for name in ("01_first", "02_second"):
        assert (out / f"{name}.ipynb").exists() and (out / f"{name}.html").exists()
    assert "answer=42" in result.stdout and "01_first" in result.stdout  # the summary table


def test_cli_stops_at_a_failing_cell_with_name_and_index(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_boom.ipynb", *BAD_CELLS)
    write_notebook(nbs / "02_after.ipynb", "print('should not run')")
    out = tmp_path / "out"
    result = run_cli("--notebooks", str(nbs), "--out", str(out), "--scale", "quick")
    assert result.returncode == 1
    assert "01_boom failed at cell 2" in result.stderr
    assert "ZeroDivisionError" in result.stderr and "1 / 0" in result.stderr  # the traceback, the cell
    statuses = [(n["name"], n["status"]) for n in json.loads((out / "summary.json").read_text())["notebooks"]]
    assert statuses == [("01_boom", "failed"), ("02_after", "not run")]
    assert (out / "01_boom.ipynb").exists() and not (out / "02_after.ipynb").exists()


def test_cli_only_selects_and_unknown_is_a_one_line_error(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_first.ipynb", "x = 1")
    write_notebook(nbs / "02_second.ipynb", "1 / 0")
    result = run_cli("--notebooks", str(nbs), "--only", "07", "--scale", "quick")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "rlhf_utils.course: error: no notebook matches '07' (the notebooks are: 01_first, 02_second)"
    )
    out = tmp_path / "out"
    result = run_cli("--notebooks", str(nbs), "--only", "first", "--out", str(out), "--scale", "quick")
    assert result.returncode == 0, result.stderr
    assert [n["name"] for n in json.loads((out / "summary.json").read_text())["notebooks"]] == ["01_first"]


@pytest.mark.parametrize("args, env", [(["--scale", "huge"], {}), ([], {"RLHF_SCALE": "huge"})])
def test_cli_unknown_scale_is_a_one_line_error(tmp_path, args, env, monkeypatch):
    write_notebook(tmp_path / "01_first.ipynb", "x = 1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = run_cli("--notebooks", str(tmp_path), *args)
    assert result.returncode == 2
    assert result.stderr.strip() == "rlhf_utils.course: error: unknown scale 'huge': use one of quick, full"


def test_a_relative_out_folder_still_collects_the_figures(tmp_path, monkeypatch):
    """The kernel runs in the notebook's folder, so the runner must hand it an absolute path."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_notebook(nbs / "01_only.ipynb", "from rlhf_utils.report import report\nreport(answer=42)")
    monkeypatch.chdir(tmp_path)
    run = run_notebook(nbs / "01_only.ipynb", "quick", "relative/out", timeout=120, progress=False)
    assert run.ok and run.figures == {"answer": 42}
    assert (tmp_path / "relative" / "out" / "01_only.figures.json").is_file()
