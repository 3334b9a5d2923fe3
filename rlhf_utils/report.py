"""``report()``: how a notebook states the figures it claims, for the reader and the tests.

    from rlhf_utils.report import report
    report(final_perplexity=ppl, true_perplexity=world.true_perplexity())

shows the figures as a small table and, when ``$RLHF_REPORT`` names a file (the course
runner sets it for each notebook), merges them into that JSON file. The notebook tests
assert on them (``tests/test_notebooks.py``), so "the loss fell" is checked on every run.
Importing this module is cheap: no torch, no Jupyter machinery.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

REPORT_ENV = "RLHF_REPORT"
"""Environment variable naming the JSON file that :func:`report` merges figures into."""


def _jsonable(name: str, value: Any) -> Any:
    """``value`` as plain JSON data: numpy and 0-d torch scalars become Python numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(name, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(name, v) for k, v in value.items()}
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        return _jsonable(name, tolist())
    raise TypeError(
        f"report({name}=...): a figure must be a number, a string, a bool, or a list or "
        f"array of them, not {type(value).__name__}"
    )


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list) and len(value) > 6:
        return "[" + ", ".join(format_value(v) for v in value[:3]) + f", ... ({len(value)} values)]"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


class FigureTable(dict):
    """The figures of one :func:`report` call; shows as a two-column table in a notebook."""

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td style='text-align:left'><code>{html.escape(k)}</code></td>"
            f"<td style='text-align:right'>{html.escape(format_value(v))}</td></tr>"
            for k, v in self.items()
        )
        return (
            "<table><thead><tr><th style='text-align:left'>reported figure</th>"
            f"<th style='text-align:right'>value</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython's plain-text view
        printer.text(repr(self))

    def __repr__(self) -> str:
        if not self:
            return "(no figures)"
        width = max(len(k) for k in self)
        return "\n".join(f"{k:<{width}}  {format_value(v)}" for k, v in self.items())


def _in_ipython() -> bool:
    ipython = sys.modules.get("IPython")
    return ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None


def report(**figures: Any) -> None:
    """Report the figures this notebook claims, e.g. ``report(final_loss=2.3, initial_loss=6.1)``.

    The figures are shown as a small table. When ``$RLHF_REPORT`` names a file (the course
    runner sets it), they are merged into that JSON object: a later call with the same name
    replaces the earlier value. Values must be numbers, strings, bools or lists of them;
    numpy values and torch tensors are converted with ``.tolist()`` (a scalar stays a number).
    """
    table = FigureTable((name, _jsonable(name, value)) for name, value in figures.items())
    if _in_ipython():
        from IPython.display import display

        display(table)
    else:
        print(repr(table))

    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    path = Path(path)
    merged: dict[str, Any] = {}
    if path.exists() and path.stat().st_size > 0:
        merged = json.loads(path.read_text())
    merged.update(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


# --------------------------------------------------------------------------------------
# The README's results table, made from a run's summary.json
# --------------------------------------------------------------------------------------

RESULTS: dict[str, list[tuple[str, str]]] = {
    "01": [("held-out perplexity vs the world's true perplexity",
            "{final_perplexity:.3f} vs {true_perplexity:.3f} (ratio {perplexity_ratio:.3f}); loss {initial_loss:.2f} -> {final_loss:.2f}"),
           ("grammatical completions at temperature 0.7 / 1.0 / 1.5",
            "{grammatical_t07:.3f} / {grammatical_t10:.3f} / {grammatical_t15:.3f}")],
    "02": [("return on CartPole at {total_timesteps} steps (random policy: {random_return:.0f})",
            "PPO {ppo_final_return:.1f}; SB3's PPO {sb3_final_return:.1f}; A2C {a2c_final_return:.1f}"),
           ("REINFORCE gradient variance without / with a baseline", "{baseline_variance_ratio:.1f}x")],
    "03": [("defect rate of sampled completions, base -> SFT",
            "{defect_rate_base:.1%} -> {defect_rate_sft:.1%}; gold mean {gold_mean_base:+.3f} -> {gold_mean_sft:+.3f}"),
           ("held-out completion NLL, base -> SFT (the demonstrator's floor)",
            "{sft_heldout_nll_base:.4f} -> {sft_heldout_nll_masked:.4f} ({sft_heldout_nll_floor:.4f})")],
    "04": [("simulated annotator's agreement with the gold preference (the noise allows)",
            "{annotator_gold_agreement:.3f} ({best_accuracy:.3f}); {n_pairs} pairs, {n_reader_labels} from the reader")],
    "05": [("reward model: held-out accuracy vs labels (share of the noise ceiling) / vs gold order",
            "{heldout_label_accuracy:.3f} ({label_accuracy_over_ceiling:.1%} of {best_gold_agreement_allowed:.3f}) / "
            "{heldout_gold_agreement:.3f}; ECE {calibration_ece:.3f}"),
           ("mean residual of repeated / broken sentences (what it over-rates)",
            "{residual_repetition:+.3f} / {residual_broken:+.3f}")],
    "06": [("gold reward of the policy, SFT -> PPO (SFT std)",
            "{gold_before:+.3f} -> {gold_after:+.3f} ({gold_std_before:.3f}); KL {kl_final:.2f} nats; "
            "{grammatical_fraction:.1%} grammatical; proxy {proxy_before:+.2f} -> {proxy_after:+.2f}")],
    "07": [("RLHF vs SFT win rate by the gold preference (95% CI); with the reward model as the judge",
            "{win_rate:.3f} ({win_rate_low:.3f}-{win_rate_high:.3f}); {proxy_win_rate:.3f}"),
           ("no KL penalty: gold at the start -> peak (step) -> end; early-stopped; against an ensemble",
            "{gold_start:+.2f} -> {gold_peak:+.2f} (step {gold_peak_step}) -> {gold_final:+.2f} at KL {kl_final:.0f} nats; "
            "{early_stop_gold:+.2f}; peak {ensemble_gold_peak:+.2f}")],
    "08": [("gold (KL, nats) at one budget: PPO / RLOO / GRPO / Dr. GRPO / DPO beta={dpo_beta_mid:g} / "
            "best-of-{bon_n_max} (SFT {gold_sft:+.2f})",
            "{ppo_gold_final:+.2f} ({ppo_kl_final:.1f}) / {rloo_gold_final:+.2f} ({rloo_kl_final:.1f}) / "
            "{grpo_gold_final:+.2f} ({grpo_kl_final:.1f}) / {dr_grpo_gold_final:+.2f} ({dr_grpo_kl_final:.1f}) / "
            "{dpo_gold_mid:+.2f} ({dpo_kl_mid:.1f}) / {bon_gold_max:+.2f} ({bon_kl_max:.2f})"),
           ("REINFORCE without KL: gold peak -> end (KL); best-of-{bon_n_max}'s KL estimate vs the bound log n - (n-1)/n",
            "{reinforce_no_kl_gold_peak:+.2f} -> {reinforce_no_kl_gold_final:+.2f} ({reinforce_no_kl_kl_final:.0f} nats); "
            "{bon_kl_max:.2f} vs {bon_kl_bound_max:.2f} ({bon_kl_passfail_max:.2f} with a pass/fail judge)"),
           ("training wall time (samples/s): PPO / RLOO / DPO beta={dpo_beta_mid:g} (pairs/s); best-of-n's pool",
            "{ppo_train_s:.1f} s ({ppo_samples_per_s:.0f}) / {rloo_train_s:.1f} s ({rloo_samples_per_s:.0f}) / "
            "{dpo_train_s_mid:.1f} s ({dpo_pairs_per_s_mid:.0f}); {bon_s:.1f} s ({bon_samples_per_s:.0f})")],
    "09": [("the live loop, {n_labels} scripted-reader labels: policy gold SFT -> after (SFT std); KL; "
            "seconds from a click batch to new samples (median / max)",
            "{gold_before:+.3f} -> {gold_after:+.3f} ({gold_std_before:.3f}); KL {kl_after:.2f} nats; "
            "{median_wait_s:.1f} / {max_wait_s:.1f} s"),
           ("reward model's gold agreement, round 1 -> last, active / random; labels to reach {target_gold_agreement}",
            "{rm_gold_agreement_first:.3f} -> {rm_gold_agreement_final:.3f} / {rm_gold_agreement_final_random:.3f}; "
            "{labels_to_target_active:.0f} / {labels_to_target_random:.0f}")],
}
"""What the README's results table shows of each notebook: (what, how), formatted from its figures"""


def results_table(summary: Mapping[str, Any]) -> str:
    """The README's results table (Markdown) from a course run's ``summary.json`` content:
    the machine and load it ran on, then a row per figure of :data:`RESULTS`, each notebook's
    wall time and peak memory. A figure a notebook did not report shows as ``(not reported)``."""
    m = summary.get("machine", {})
    lines = [f"Run of {summary.get('written', '?')} at scale `{summary.get('scale', '?')}` on {m.get('cpu', '?')} "
             f"({m.get('cores', '?')} cores, load {m.get('load_1_5_15', '?')} at the start), "
             f"{m.get('threads', '?')} torch thread(s), torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}"
             + (f", kernels pinned to {', '.join(f'{k}={v}' for k, v in m['pinned'].items() if v)}"
                if any((m.get("pinned") or {}).values()) else "") + ".",
             "", "| notebook | figure | value | wall, peak memory |", "|---|---|---|---|"]
    for nb in summary.get("notebooks", []):
        number, figures = nb["name"][:2], nb.get("figures", {})
        for what, how in RESULTS.get(number, []):
            try:
                what, value = what.format(**figures), how.format(**figures)
            except (KeyError, ValueError, TypeError):
                value = "(not reported)"
            cost = f"{nb['wall_s']:.0f} s, {nb['peak_rss_mb']:.0f} MiB" if nb.get("peak_rss_mb") else f"{nb['wall_s']:.0f} s"
            lines.append(f"| {number} | {what} | {value} | {cost} ({nb['status']}) |")
    total = sum(nb.get("wall_s", 0) for nb in summary.get("notebooks", []))
    peak = max((nb.get("peak_rss_mb") or 0 for nb in summary.get("notebooks", [])), default=0)
    lines.append(f"\nTotal: {total / 60:.1f} min of notebook wall time; the largest kernel peaked at {peak:.0f} MiB.")
    return "\n".join(lines)


def load_summary(path: str | Path) -> dict:
    """A run's ``summary.json`` (``path`` may be the run folder)."""
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"No summary.json at {path}: pass a run folder written by python -m rlhf_utils.course")
    return json.loads(path.read_text())
