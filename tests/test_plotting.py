"""Smoke tests of rlhf_utils.plotting on matplotlib's Agg backend: each function draws what it
should on the Axes it is given (counted lines, bars, points), smooth() against a naive moving
average, and LivePlot both outside IPython (no display: nothing to update) and with a display
handle."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlhf_utils import plotting as PL  # noqa: E402


@pytest.fixture()
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def test_smooth_is_a_moving_average():
    x = [1.0, 3.0, 2.0, 5.0, 4.0, 0.0]
    naive = [sum(x[i:i + 3]) / 3 for i in range(len(x) - 2)]
    assert PL.smooth(x, 3) == pytest.approx(naive)
    assert len(PL.smooth(np.arange(20.0), 10)) == 11
    assert PL.smooth([1.0, 2.0], 10).tolist() == [1.0, 2.0]  # fewer points than the window: as they are
    assert PL.smooth(x, 1).tolist() == x


def test_plot_history_one_line_per_key(ax):
    history = [{"step": s, "a": s * 2.0, "b": -s} for s in range(1, 6)]
    assert PL.plot_history(ax, history, {"a": "first", "b": "second"}, title="t") is ax
    assert [line.get_label() for line in ax.lines] == ["first", "second"]
    assert ax.lines[0].get_xdata().tolist() == [1, 2, 3, 4, 5] and ax.lines[1].get_ydata().tolist() == [-1, -2, -3, -4, -5]
    assert ax.get_legend() is not None and ax.get_title() == "t" and ax.get_xlabel() == "step"
    _, single = plt.subplots()
    PL.plot_history(single, history, {"a": "only"})
    assert len(single.lines) == 1 and single.get_legend() is None


def test_plot_calibration_points_diagonal_and_counts(ax):
    mean_p = np.array([0.1, np.nan, 0.7])
    freq = np.array([0.2, np.nan, 0.6])
    count = np.array([5, 0, 7])
    PL.plot_calibration(ax, mean_p, freq, count, ece=0.05)
    diagonal, points = ax.lines
    assert diagonal.get_xdata().tolist() == [0, 1]
    assert points.get_xdata().tolist() == [0.1, 0.7]  # the empty bin is left out
    assert [t.get_text() for t in ax.texts] == ["5", "7"]
    assert "ECE 0.050" in points.get_label()


def test_plot_reward_vs_gold_one_scatter_per_group_present(ax):
    groups = np.array(["clean", "clean", "repetition", "several", "clean"])
    PL.plot_reward_vs_gold(ax, np.arange(5.0), np.arange(5.0) * 2, groups, title="x")
    labels = [c.get_label() for c in ax.collections]
    assert labels == ["clean (3)", "repetition (1)", "several (1)"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 5


def test_plot_residuals_bars_coloured_by_sign(ax):
    PL.plot_residuals(ax, {"clean": (-0.2, 0.05, 40), "repetition": (0.4, 0.1, 12)})
    bars = ax.patches
    assert len(bars) == 2 and [b.get_height() for b in bars] == pytest.approx([-0.2, 0.4])
    green, red = (matplotlib.colors.to_rgba(c) for c in ("tab:green", "tab:red"))
    assert [b.get_facecolor() for b in bars] == [green, red]


def test_plot_label_efficiency_two_curves_and_the_ceiling(ax):
    PL.plot_label_efficiency(ax, [100, 300, 1000], [0.6, 0.7, 0.75], [0.62, 0.71, 0.8], ceiling=0.85)
    assert len(ax.lines) == 4  # two curves, the ceiling and 90% of it
    assert list(ax.lines[2].get_ydata()) == [0.85, 0.85]
    assert list(ax.lines[3].get_ydata()) == pytest.approx([0.765, 0.765])
    assert ax.get_xscale() == "log"


def test_plot_distributions_shared_bins(ax):
    rng = np.random.default_rng(0)
    PL.plot_distributions(ax, {"sft": rng.normal(size=100), "ppo": rng.normal(1, 1, size=100)}, bins=11)
    assert len(ax.patches) == 2 * 10  # 11 edges: 10 bars per sample
    first, second = ax.patches[:10], ax.patches[10:]
    assert [p.get_x() for p in first] == pytest.approx([p.get_x() for p in second])  # the same bins
    assert sum(p.get_height() for p in first) == 100
    _, flat = plt.subplots()
    PL.plot_distributions(flat, {"one value": np.ones(5)})  # no spread: still draws
    assert sum(p.get_height() for p in flat.patches) == 5


def test_live_plot_outside_ipython_draws_without_a_display():
    """Outside a notebook IPython's display returns no handle: LivePlot still draws, every
    ``every`` steps and at the last one, and skips keys a step lacks."""
    live = PL.LivePlot(total=5, every=2, keys=["a", "b"], cols=2)
    assert live.handle is None and live.axes.shape == (1, 2)
    ax_a, ax_b = live.axes.flat
    points = []
    for step in range(1, 6):
        live({"step": step, "a": float(step), **({"b": -step} if step > 1 else {})})
        points.append(len(ax_a.lines[0].get_xdata()) if ax_a.lines else 0)
    assert points == [0, 2, 2, 4, 5]  # redrawn at steps 2, 4 and 5 (the last)
    assert ax_b.lines[0].get_xdata().tolist() == [2, 3, 4, 5] and ax_a.get_title() == "a"
    assert len(live.rows) == 5


def test_live_plot_updates_its_display_handle(monkeypatch):
    import IPython.display

    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    handle = Handle()
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: handle)
    live = PL.LivePlot(total=3, every=1)
    assert list(live.keys) == list(PL.PPO_KEYS) and live.axes.size == 8
    for step in range(1, 4):
        live({"step": step, "objective/scores": 0.1 * step})
    assert handle.updates == [live.fig] * 3
