"""The course runner: execute the notebooks in order and collect what each one reports.

    python -m rlhf_utils.course                    # every notebook, in order
    python -m rlhf_utils.course --only 01,03       # some of them, by number or by name
    python -m rlhf_utils.course --scale full       # the real run, sized for one GPU
    python -m rlhf_utils.course --out runs/mine    # where the results go

Each notebook runs in a fresh kernel of this interpreter (``sys.executable``), with
``notebooks/`` as its working directory and ``RLHF_SCALE`` set in its environment. A run
writes, into ``runs/<timestamp>/`` (ignored by git):

* ``NN_name.ipynb`` -- the executed copy, with its outputs (also when a cell failed);
* ``NN_name.html``  -- the same, exported to HTML (nbconvert) to read in a browser;
* ``NN_name.figures.json`` -- the figures the notebook reported (see :func:`report`);
* ``summary.json``  -- one object per notebook: name, status, wall time, peak memory of
  the kernel's process tree, and its figures; printed as a table at the end.

A notebook states the figures it claims with :func:`rlhf_utils.report.report`; the runner
points ``$RLHF_REPORT`` at a file per notebook and collects them. The notebook tests assert
on these figures, so a notebook's claims ("the loss fell", "the reward went up") are
checked on every run.

A failing cell stops the run: the runner prints the notebook, the cell and the traceback,
keeps the partly executed notebook, and exits with status 1.

Importing this module is cheap (no torch, no Jupyter machinery); the runner's heavier
imports happen inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlhf_utils.checks import cli_parser, exit_on_error
from rlhf_utils.report import REPORT_ENV, format_value, load_summary, results_table

#: The scales the course runs at (the same as ``rlhf_utils.config.SCALES``, repeated here
#: because importing config pulls in torch; a test keeps the two equal).
SCALES = ("quick", "full")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNS_DIR = REPO_ROOT / "runs"

_NOTEBOOK_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------------------
# Finding the notebooks
# --------------------------------------------------------------------------------------


def find_notebooks(directory: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The course notebooks ``NN_name.ipynb`` in ``directory``, in course order."""
    directory = Path(directory)
    return sorted(p for p in directory.glob("*.ipynb") if _NOTEBOOK_NAME.match(p.name))


def select_notebooks(notebooks: Sequence[Path], only: str | Sequence[str] | None) -> list[Path]:
    """The notebooks named by ``only`` ("01,03", "language_models", "01_language_models").

    Each entry matches by number (``1`` or ``01``), by file stem with or without its number,
    or by file name. Raises ``ValueError`` with one line listing what exists if an entry
    matches nothing. The result keeps course order.
    """
    if only is None:
        return list(notebooks)
    wanted = [w.strip() for w in (only.split(",") if isinstance(only, str) else only) if w.strip()]
    if not wanted:
        raise ValueError("--only is empty: name notebooks by number or name, e.g. --only 01,03")
    chosen: set[Path] = set()
    for w in wanted:
        key = w.removesuffix(".ipynb").lower()
        hits = [
            p
            for p in notebooks
            if key in {p.stem.lower(), p.stem[3:].lower()}
            or (key.isdigit() and int(key) == int(p.stem[:2]))
        ]
        if not hits:
            have = ", ".join(p.stem for p in notebooks) or "none"
            raise ValueError(f"no notebook matches {w!r} (the notebooks are: {have})")
        chosen.update(hits)
    return [p for p in notebooks if p in chosen]


def check_scale(scale: str) -> str:
    """``scale`` lower-cased if it is one of :data:`SCALES`, else a one-line ``ValueError``."""
    s = str(scale).strip().lower()
    if s not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return s


def default_scale() -> str:
    """``$RLHF_SCALE`` if set, else the hardware's default (``full`` with CUDA, else ``quick``)."""
    if os.environ.get("RLHF_SCALE"):
        return check_scale(os.environ["RLHF_SCALE"])
    from rlhf_utils.config import get_scale  # imports torch: only when we must ask CUDA

    return get_scale()


# --------------------------------------------------------------------------------------
# Running one notebook
# --------------------------------------------------------------------------------------


@dataclass
class NotebookRun:
    """What happened when one notebook ran."""

    name: str
    """File stem, e.g. ``01_language_models``."""
    path: str
    """The source notebook."""
    status: str = "not run"
    """``ok``, ``failed`` (a cell raised, timed out, or the kernel died), ``not run`` or ``interrupted``."""
    figures: dict[str, Any] = field(default_factory=dict)
    """What the notebook reported with :func:`report`."""
    wall_s: float = 0.0
    """Seconds from starting the kernel to the last cell's end."""
    peak_rss_mb: float | None = None
    """Peak resident memory of the kernel and its child processes, in MiB (sampled)."""
    scale: str = ""
    cells_total: int = 0
    """Code cells in the notebook."""
    cells_done: int = 0
    """Code cells that finished without error."""
    failed_cell: int | None = None
    """Index (0-based, among all cells) of the cell that failed."""
    error: str | None = None
    """The error: for a failing cell, nbclient's message with the cell's source and traceback."""
    executed_path: str | None = None
    html_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe_failure(self) -> str:
        """A few lines saying where and why the notebook failed (empty when it did not)."""
        if self.ok:
            return ""
        if self.failed_cell is None:
            where = f"{self.name}: {self.status}"
        else:
            where = (
                f"{self.name} failed at cell {self.failed_cell} (0-based index; "
                f"code cell {self.cells_done + 1} of {self.cells_total})"
            )
        saved = f"\n(partly executed notebook: {self.executed_path})" if self.executed_path else ""
        return f"{where}\n{self.error or ''}{saved}".rstrip()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _PeakRSS(threading.Thread):
    """Samples the resident memory of a process and all its descendants; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                pass
        self.peak_bytes = max(self.peak_bytes, total)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self.sample()
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak_bytes / 2**20


def _kernel_manager_class() -> type:
    """An AsyncKernelManager whose "python3" kernel is always this interpreter.

    A kernel spec named python3 elsewhere on the machine (``~/.local/share/jupyter``) could
    point at another Python without this project's packages; the runner never uses it.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class ThisPythonSpecManager(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            if kernel_name != "python3":
                return super().get_kernel_spec(kernel_name)
            from ipykernel.kernelspec import RESOURCES

            return KernelSpec(
                resource_dir=RESOURCES,
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python 3 ({sys.executable})",
                language="python",
                metadata={"debugger": False},
            )

    class ThisPythonKernelManager(AsyncKernelManager):
        def _kernel_spec_manager_default(self) -> KernelSpecManager:
            return ThisPythonSpecManager(data_dir=self.data_dir)

    return ThisPythonKernelManager


def kernel_env(scale: str, report_path: Path | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a notebook's kernel gets: ours, plus ``env``, the scale and the report file."""
    from rlhf_utils.reproducibility import cpu_env

    out = dict(os.environ)
    out.setdefault("RLHF_HEADLESS", "1")  # nobody can click a widget in a kernel the runner drives
    out.update(cpu_env())  # the same kernels on every x86 machine, read when torch starts
    out.update(env or {})
    out["RLHF_SCALE"] = scale
    if report_path is not None:
        out[REPORT_ENV] = str(report_path)
    else:
        out.pop(REPORT_ENV, None)
    # import rlhf_utils from this checkout even before `pip install -e .`
    if (REPO_ROOT / "pyproject.toml").exists():
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), out.get("PYTHONPATH")]))
    # debugpy's "frozen modules" warning on every kernel start is noise here
    out.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return out


def _save(nb: Any, run: NotebookRun, out_dir: Path) -> None:
    """Write the executed notebook and its HTML export (best effort for the HTML)."""
    import nbformat

    executed = out_dir / f"{run.name}.ipynb"
    nbformat.write(nb, executed)
    run.executed_path = str(executed)
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nb)
        html_path = out_dir / f"{run.name}.html"
        html_path.write_text(body, encoding="utf-8")
        run.html_path = str(html_path)
    except Exception as exc:  # a broken export must not hide the run's own result
        print(f"warning: could not export {run.name} to HTML: {exc}", file=sys.stderr)


def run_notebook(
    path: str | Path,
    scale: str,
    out_dir: str | Path,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    progress: bool = True,
) -> NotebookRun:
    """Execute one notebook top to bottom in a fresh kernel; never raises for a failing cell.

    Args:
        path: the notebook; its folder is the kernel's working directory.
        scale: ``quick`` or ``full``, given to the kernel as ``RLHF_SCALE``.
        out_dir: where the executed copy, the HTML and the reported figures are written.
        timeout: seconds allowed per cell (``None``: no limit).
        env: extra environment variables for the kernel (e.g. ``RLHF_CHECKPOINTS``).
        progress: show a tqdm bar of code cells done / total.

    Returns:
        A :class:`NotebookRun`; on failure ``status == "failed"`` with the cell index and
        the traceback in ``error`` (the partly executed notebook is still saved).
    """
    import nbformat
    from nbclient import NotebookClient
    from tqdm import tqdm

    path = Path(path).resolve()
    scale = check_scale(scale)
    out_dir = Path(out_dir).resolve()  # the kernel runs in the notebook's folder: relative paths would move
    out_dir.mkdir(parents=True, exist_ok=True)
    run = NotebookRun(name=path.stem, path=str(path), scale=scale)

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    run.cells_total = len(code_cells)
    report_path = out_dir / f"{run.name}.figures.json"
    report_path.unlink(missing_ok=True)

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        kernel_manager_class=_kernel_manager_class(),
        resources={"metadata": {"path": str(path.parent)}},
        allow_errors=False,
        # the kernel app's own log (its TCP-without-encryption notice on every start) is
        # noise here; errors in cells still come back as the cells' outputs
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    bar = tqdm(total=run.cells_total, desc=run.name, unit="cell", disable=not progress, file=sys.stderr)
    sampler: _PeakRSS | None = None
    start = time.perf_counter()
    try:
        with client.setup_kernel(env=kernel_env(scale, report_path, env)):
            pid = getattr(client.km.provisioner, "pid", None) if client.km else None
            if pid is not None:
                sampler = _PeakRSS(pid)
                sampler.start()
            info = client.wait_for_reply(client.kc.kernel_info())
            if info is not None and "language_info" in info["content"]:
                nb.metadata["language_info"] = info["content"]["language_info"]
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                except Exception as exc:  # CellExecutionError, CellTimeoutError, DeadKernelError
                    run.status, run.failed_cell = "failed", index
                    run.error = _ANSI.sub("", f"{type(exc).__name__}: {exc}")
                    break
                run.cells_done += 1
                bar.update()
            else:
                run.status = "ok"
            client.set_widgets_metadata()
    except Exception as exc:  # the kernel did not start, or died between cells
        run.status = "failed"
        run.error = run.error or _ANSI.sub("", f"{type(exc).__name__}: {exc}")
    finally:
        run.wall_s = round(time.perf_counter() - start, 2)
        if sampler is not None:
            run.peak_rss_mb = round(sampler.stop(), 1)
        bar.close()

    if report_path.exists():
        run.figures = json.loads(report_path.read_text())
    _save(nb, run, out_dir)
    return run


# --------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------


def _format_seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def format_summary(runs: Sequence[NotebookRun], width: int | None = None) -> str:
    """The one-screen table: a line per notebook, then its figures wrapped beneath."""
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    name_w = max([len("notebook"), *(len(r.name) for r in runs)])
    status_w = max([len("status"), *(len(r.status) for r in runs)])
    lines = [f"{'notebook':<{name_w}}  {'status':<{status_w}}  {'wall':>7}  {'peak mem':>9}"]
    lines.append("-" * len(lines[0]))
    for r in runs:
        mem = f"{r.peak_rss_mb:.0f} MiB" if r.peak_rss_mb is not None else "-"
        wall = _format_seconds(r.wall_s) if r.status not in ("not run", "interrupted") else "-"
        lines.append(f"{r.name:<{name_w}}  {r.status:<{status_w}}  {wall:>7}  {mem:>9}")
        if r.figures:
            text = ", ".join(f"{k}={format_value(v)}" for k, v in r.figures.items())
            lines += textwrap.wrap(text, width=width, initial_indent="    ", subsequent_indent="    ")
        elif r.ok:
            lines.append("    (reported no figures)")
        if r.status == "failed" and r.failed_cell is not None:
            lines.append(f"    failed at cell {r.failed_cell}")
    return "\n".join(lines)


def write_summary(runs: Sequence[NotebookRun], out_dir: Path, scale: str, machine: dict | None = None) -> Path:
    """``summary.json``: the scale, when, on what machine (``machine``: as the run began), and
    one object per notebook."""
    from rlhf_utils.reproducibility import cpu_env, machine_info

    path = Path(out_dir) / "summary.json"
    data = {
        "scale": scale,
        "seed": int(os.environ.get("RLHF_SEED", "0") or 0),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.executable,
        "machine": machine or {**machine_info(), "pinned": cpu_env()},
        "notebooks": [r.to_json() for r in runs],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _new_run_dir() -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out, n = RUNS_DIR / stamp, 1
    while out.exists():
        n += 1
        out = RUNS_DIR / f"{stamp}_{n}"
    return out


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = cli_parser("rlhf_utils.course", "Execute the course notebooks in order and summarise what each reports.")
    p.add_argument("--only", metavar="LIST", help="comma-separated notebooks, by number or name: --only 01,03")
    p.add_argument(
        "--scale",
        metavar="SCALE",
        help="quick (2 CPU cores, ~1-2 min a notebook) or full (one GPU); default: $RLHF_SCALE, "
        "else full with CUDA and quick without",
    )
    p.add_argument("--seed", type=int, metavar="N", help="move every notebook's seeds by N (default: $RLHF_SEED, "
                   "else 0, the course as written); runs at seeds 0, 1, 2 give the spreads the notebooks quote")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>/)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds allowed per cell (default: no limit)")
    p.add_argument("--notebooks", metavar="DIR", default=str(NOTEBOOKS_DIR), help="where the notebooks are")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--results", metavar="RUN", help="print the README's results table of a finished run "
                   "(its folder or summary.json) and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; every error is one line on stderr and a non-zero status (2: a bad
    argument, 1: a notebook failed; the traceback of an unexpected error with ``--debug``)."""
    args = _parser().parse_args(argv)
    try:
        return exit_on_error("rlhf_utils.course", args.debug, _main, args)
    except SystemExit as stop:
        return stop.code


def _main(args: argparse.Namespace) -> int:
    prog = "rlhf_utils.course"
    if args.results:
        try:
            print(results_table(load_summary(args.results)))
        except (OSError, ValueError) as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        scale = check_scale(args.scale) if args.scale else default_scale()
        notebooks = find_notebooks(args.notebooks)
        if not notebooks:
            raise ValueError(f"no notebooks named NN_name.ipynb in {args.notebooks}")
        selected = select_notebooks(notebooks, args.only)
        if args.timeout is not None and not 0 < args.timeout < float("inf"):
            raise ValueError(f"--timeout {args.timeout:g}: give the seconds allowed per cell, a number > 0 "
                             "(or leave it out: no limit)")
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out} is a file: pass a folder for the results")
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

    if args.seed is not None:
        os.environ["RLHF_SEED"] = str(args.seed)  # every kernel inherits it (rlhf_utils.config.get_preset)
    out_dir = Path(args.out) if args.out else _new_run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"Running {len(selected)} notebook(s) at scale {scale!r}; results in {out_dir}/", flush=True)

    from rlhf_utils.reproducibility import cpu_env, machine_info

    machine = {**machine_info(), "pinned": cpu_env()}  # the load as the run begins
    runs = [NotebookRun(name=p.stem, path=str(p.resolve()), scale=scale) for p in selected]
    interrupted = False
    for i, path in enumerate(selected):
        try:
            runs[i] = run = run_notebook(path, scale, out_dir, timeout=args.timeout, progress=not args.no_progress)
        except KeyboardInterrupt:  # Ctrl-C: keep what finished, say where it stopped
            runs[i].status, interrupted = "interrupted", True
            write_summary(runs, out_dir, scale, machine)
            print(f"\n{prog}: interrupted during {path.stem}", file=sys.stderr)
            break
        write_summary(runs, out_dir, scale, machine)
        if not run.ok:
            print(f"\n{prog}: {run.describe_failure()}\n", file=sys.stderr, flush=True)
            break

    print()
    print(format_summary(runs))
    print(f"total wall time: {_format_seconds(sum(r.wall_s for r in runs))}")
    print(f"\nsummary: {out_dir / 'summary.json'}   executed notebooks and HTML: {out_dir}/")
    if interrupted:
        return 130
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
