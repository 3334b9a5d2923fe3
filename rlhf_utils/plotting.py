"""The course's plots: the live training plot and the figures that recur across notebooks.

Each function draws on a matplotlib ``Axes`` it is given (so a notebook lays out its own
figure) and returns it; nothing is shown or saved here. :class:`LivePlot` redraws a grid
of training curves in place while PPO (or any loop that calls it with a dict per step)
runs, through one IPython display handle.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

PPO_KEYS = ("objective/scores", "gold/mean", "objective/kl", "objective/kl_coef",
            "policy/entropy", "policy/clipfrac", "policy/approx_kl", "val/explained_variance")
"""what notebook 06's live plot shows: reward, gold, KL and beta, then PPO's health checks"""


def smooth(values: Sequence[float], window: int = 10) -> np.ndarray:
    """Moving average over ``window`` points (``mode="valid"``: ``len - window + 1`` points);
    the values themselves when there are fewer than ``window``."""
    x = np.asarray(values, dtype=float)
    return np.convolve(x, np.ones(window) / window, mode="valid") if len(x) >= window else x


class LivePlot:
    """Training curves redrawn in one notebook output every ``every`` steps (and at ``total``).

    Call it with each step's statistics (a dict with ``"step"`` and the ``keys``), e.g. as
    ``PPOTrainer.train(callback=LivePlot(cfg.steps, every=8))``. Keys a step lacks are skipped.
    """

    def __init__(self, total: int, every: int = 1, keys: Sequence[str] = PPO_KEYS, cols: int = 4):
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.total, self.every, self.keys, self.rows = total, max(1, every), list(keys), []
        n_rows = math.ceil(len(self.keys) / cols)
        self.fig, self.axes = plt.subplots(n_rows, cols, figsize=(3.5 * cols, 2.5 * n_rows), squeeze=False)
        self.handle = display(self.fig, display_id=True)
        plt.close(self.fig)

    def __call__(self, stats: Mapping[str, float]) -> None:
        self.rows.append(dict(stats))
        if stats["step"] % self.every and stats["step"] != self.total:
            return
        for ax, key in zip(self.axes.flat, self.keys):
            ax.clear()
            points = [(r["step"], r[key]) for r in self.rows if key in r]
            if points:
                ax.plot(*zip(*points))
            ax.set_title(key, fontsize=9)
        self.fig.tight_layout()
        if self.handle is not None:
            self.handle.update(self.fig)


def plot_history(ax, history: Sequence[Mapping[str, float]], keys: Mapping[str, str], x: str = "step",
                 title: str | None = None):
    """One line per ``{key: label}`` from a list of per-step dicts (a PPO history)."""
    for key, label in keys.items():
        ax.plot([h[x] for h in history], [h[key] for h in history], label=label)
    ax.set(xlabel=x, title=title)
    if len(keys) > 1:
        ax.legend(fontsize=8)
    return ax


def plot_calibration(ax, mean_p: np.ndarray, freq: np.ndarray, count: np.ndarray, ece: float):
    """Reliability diagram: observed frequency against predicted probability, counts beside
    the points, the diagonal for a perfectly calibrated model."""
    ax.plot([0, 1], [0, 1], ":", c="gray", label="perfectly calibrated")
    ok = count > 0
    ax.plot(mean_p[ok], freq[ok], "o-", label=f"reward model (ECE {ece:.3f})")
    for x, y, n in zip(mean_p[ok], freq[ok], count[ok]):
        ax.annotate(str(n), (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set(xlabel="predicted P(chosen preferred)", ylabel="observed frequency", title="calibration (held out)")
    ax.legend()
    return ax


def plot_reward_vs_gold(ax, gold: np.ndarray, reward: np.ndarray, groups: np.ndarray, title: str = ""):
    """Scatter of the reward model's score against the gold reward, coloured by defect group."""
    for name in ("clean", "repetition", "broken", "unparseable", "off_topic", "several"):
        sel = groups == name
        if sel.any():
            ax.scatter(gold[sel], reward[sel], s=8, alpha=0.6, label=f"{name} ({sel.sum()})")
    ax.set(xlabel="gold reward", ylabel="reward model (normalised)", title=title)
    ax.legend(fontsize=7)
    return ax


def plot_residuals(ax, residuals: Mapping[str, tuple[float, float, int]]):
    """Bars of the mean residual (reward beyond the gold score) per defect group, with their
    standard errors; red where the reward model over-rates (see
    :func:`rlhf_utils.evaluation.residuals_by_defect`)."""
    names = list(residuals)
    means = [residuals[n][0] for n in names]
    ax.bar(names, means, yerr=[residuals[n][1] for n in names],
           color=["tab:green" if m <= 0 else "tab:red" for m in means])
    ax.axhline(0, c="k", lw=0.8)
    ax.set(ylabel="mean residual (reward - fit from gold)", title="what the model over-rates (red)")
    return ax


def plot_label_efficiency(ax, n_labels: Sequence[int], label_accuracy: Sequence[float],
                          gold_agreement: Sequence[float], ceiling: float):
    """Held-out accuracy against the labels and agreement with the gold order, by training labels."""
    ax.plot(n_labels, label_accuracy, "o-", label="held-out accuracy vs labels")
    ax.plot(n_labels, gold_agreement, "s-", label="held-out agreement with gold")
    ax.axhline(ceiling, ls="--", c="k", label=f"best the noise allows ({ceiling:.3f})")
    ax.axhline(0.9 * ceiling, ls=":", c="gray", label="90% of it")
    ax.set(xscale="log", xlabel="training labels", ylabel="share of pairs ordered right", title="label efficiency")
    ax.legend(fontsize=8)
    return ax


def plot_distributions(ax, samples: Mapping[str, np.ndarray], bins: int = 30, title: str = ""):
    """Overlaid histograms on shared bins (e.g. the gold reward of SFT and PPO completions)."""
    lo = min(float(np.min(v)) for v in samples.values())
    hi = max(float(np.max(v)) for v in samples.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins)
    for name, values in samples.items():
        ax.hist(values, edges, alpha=0.6, label=name)
    ax.set(title=title)
    ax.legend()
    return ax


def plot_frontier(ax, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                  labels: Mapping[str, Sequence] | None = None, styles: Mapping[str, str] | None = None,
                  start: float | None = None, title: str = "gold reward against KL from the reference"):
    """The reward-vs-KL frontier, as the DPO paper's IMDb figure (Rafailov et al. 2023, fig. 2): one
    curve per method through its ``(kl, gold)`` points (one per setting: a step, a beta, an n), in
    the order given. ``labels[name]`` writes each point's setting beside it; ``styles[name]`` is a
    matplotlib format (default ``"o-"``); ``start``, the reference policy's gold, a dotted line."""
    for name, (kl, gold) in curves.items():
        kl, gold = np.asarray(kl, dtype=float), np.asarray(gold, dtype=float)
        if kl.ndim != 1 or kl.shape != gold.shape or not kl.size:
            raise ValueError(f"plot_frontier: {name!r} needs as many KL values as gold values (at least one), "
                             f"got shapes {kl.shape} and {gold.shape}")
        (line,) = ax.plot(kl, gold, (styles or {}).get(name, "o-"), ms=4, label=name)
        for x, y, text in zip(kl, gold, (labels or {}).get(name, ())):
            ax.annotate(str(text), (x, y), fontsize=6, xytext=(2, 3), textcoords="offset points", color=line.get_color())
    if start is not None:
        ax.axhline(start, ls=":", c="gray", lw=0.8, label="reference policy (SFT)")
    ax.set(xlabel="KL(pi || pi_ref), nats", ylabel="gold reward", title=title)
    ax.legend(fontsize=7)
    return ax
