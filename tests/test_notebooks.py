"""Each course notebook executes top to bottom at the quick scale, and what it claims holds.

A session-scoped fixture runs the notebooks in course order, each at most once, into a
temporary folder (``RLHF_CHECKPOINTS`` and ``RLHF_FEEDBACK`` point there too, so the
reader's own checkpoints and ratings are never touched). A notebook's test then checks the
figures it reported with ``rlhf_utils.course.report(...)`` against :data:`CHECKS`.

Notebook owners: add your notebook's claims to CHECKS (each a Python expression over the
names you report) and its inputs to NEEDS. A notebook that does not exist yet is skipped,
and so is one whose inputs failed or do not exist yet, with the reason (a failed input
fails its own test).

Environment: ``RLHF_TEST_SCALE`` (default ``quick``) and ``RLHF_NOTEBOOK_TIMEOUT`` (seconds
per cell, default 900) change how the notebooks are run here.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from rlhf_utils.course import NOTEBOOKS_DIR, NotebookRun, find_notebooks, run_notebook

#: The course map (DESIGN.md): number -> proposed name, used to name tests of notebooks
#: that do not exist yet.
COURSE = {
    "01": "language_models",
    "02": "reinforcement_learning",
    "03": "supervised_finetuning",
    "04": "human_feedback",
    "05": "reward_modeling",
    "06": "ppo_rlhf",
    "07": "evaluation_and_reward_hacking",
    "08": "beyond_ppo",
    "09": "live_loop",
}

#: What each notebook claims: expressions over the figures it reported, all must hold.
CHECKS: dict[str, list[str]] = {
    "01": [
        "final_loss < initial_loss",  # training lowered the loss
        "final_perplexity <= 1.10 * true_perplexity",  # within 10% of the world's own perplexity
        "final_perplexity >= 0.98 * true_perplexity",  # nothing beats the true entropy (sanity)
        "grammatical_t07 > grammatical_t15",  # low temperature keeps text grammatical
    ],
    "02": [
        "ppo_final_return > 3 * random_return",  # PPO learned CartPole
        "baseline_variance_ratio > 3",  # a baseline lowers REINFORCE's gradient variance
        "text_env_reward > 2 * text_env_random_reward",  # SB3 learns the toy text environment
    ],
    "03": [
        "sft_heldout_nll_masked < sft_heldout_nll_base",  # SFT learned the demonstrations
        # ... and closed most of the gap to the demonstrator's own NLL
        "sft_heldout_nll_masked - sft_heldout_nll_floor < 0.6 * (sft_heldout_nll_base - sft_heldout_nll_floor)",
        "abs(sft_heldout_nll_masked - sft_heldout_nll_unmasked) < 0.01",  # the mask changes little here
        "prompt_nll_masked > prompt_nll_unmasked",  # ... but the masked run lets the prompts drift
        "defect_rate_sft < 0.5 * defect_rate_base",  # clean demonstrations: far fewer defects
        "gold_mean_sft > gold_mean_base",  # and a higher gold reward
        "long_prompt_nll_masked < long_prompt_nll_unmasked - 0.01",  # with long noisy prompts the mask matters
    ],
    "04": [
        "n_reader_labels + n_simulated_labels == n_pairs",  # every pair labelled once
        "n_exported_pairs == n_pairs",  # all of them in the TRL export
        "abs(annotator_gold_agreement - best_accuracy) < 0.03",  # the noise model does what the formula says
    ],
    "06": [
        "gold_after - gold_before >= gold_std_before",  # gold reward up by >= 1 SFT std
        "kl_final <= 6",  # the policy stayed near the SFT policy (nats)
        "grammatical_fraction >= 0.95",  # and kept writing grammatical text
    ],
    "07": [
        "win_rate_low > 0.5",  # the RLHF policy beats the SFT policy on the gold preference, CI and all
        "gold_peak > gold_start + 0.3",  # without a KL penalty the gold first rises ...
        "proxy_final > proxy_at_gold_peak and gold_final < gold_peak - 0.05",  # ... then the proxy climbs on, the gold falls
        "all(a < b for a, b in zip(sweep_kl_final, sweep_kl_final[1:]))",  # a smaller beta (they are in decreasing order), a larger KL
        "sweep_gold_final[-1] < min(sweep_gold_final[:-1])",  # the unpenalised run ends with the lowest gold
        # Gao et al.'s RL form has a peak, near the measured one: within 0.55-2.3x over seven runs (seeds 0-3,
        # this update and the one before it, equal to float rounding), within 20% at four of them
        "gao_beta > 0 and 0.5 < gao_d_peak / d_at_gold_peak < 2.5",
        "rm_length_coef_biased > rm_length_coef_plain + 0.03",  # the annotator's length bias is in the reward model ...
        "length_biased > length_unbiased + 0.5",  # ... and in the policy (words per completion; +0.7 to +7.5 at seeds 0-3)
        "early_stop_gold >= gold_peak - 0.1 and early_stop_gold > gold_final",  # early stopping keeps (near) the peak
        "ensemble_gold_peak > gold_peak + 0.05",  # the ensemble's run peaks higher than the single model's
    ],
    "09": [
        "n_reader_labels == 0",  # the scripted reader's labels are never counted as the reader's own
        "n_labels == n_labels_random and n_scripted_labels == n_labels + n_labels_random",  # every click, none lost
        "median_wait_s < 60 and max_wait_s < 120",  # new samples within a minute of a click batch (2 cores)
        "gold_after - gold_before >= 0.5 * gold_std_before",  # the labels steered the policy (measured about 1 std)
        "rm_gold_agreement_final > rm_gold_agreement_first + 0.02",  # and taught the reward model
        "kl_after < 10",
        "resumed_round == rounds_before_restart and resumed_labels == labels_before_restart",  # durable
    ],
    "05": [
        # near the noise ceiling (target 0.90 of it; measured 0.94 at quick)
        "heldout_label_accuracy >= 0.85 * best_gold_agreement_allowed",
        "heldout_gold_agreement >= 0.90 * best_gold_agreement_allowed",
        "calibration_ece < 0.10",  # predicted P(chosen) close to observed frequencies
        "label_efficiency_gold_agreement[-1] > label_efficiency_gold_agreement[0] + 0.1",  # labels help
        "residual_repetition > 0 or residual_broken > 0",  # it over-rates some defect (notebook 07's hacking)
        "n_labels >= 48",
    ],
    "08": [
        # every KL-regularised RL method, and DPO at DPOConfig's beta, beat the SFT policy by a wide margin
        "min(ppo_gold_final, rloo_gold_final, grpo_gold_final, dr_grpo_gold_final, rloo_k3_in_loss_gold_final, "
        "dpo_gold_mid) > gold_sft + 0.5",
        "reinforce_no_kl_gold_peak > gold_sft + 0.5",  # so does REINFORCE without KL, before it falls ...
        "reinforce_no_kl_gold_final < reinforce_no_kl_gold_peak - 0.25",  # ... as it drifts far beyond the others
        "reinforce_no_kl_kl_final > 1.5 * max(ppo_kl_final, rloo_kl_final, grpo_kl_final, dr_grpo_kl_final, "
        "rloo_k3_in_loss_kl_final)",
        "gao_rl_beta_reinforce_no_kl > 0 and 1.2 < math.exp(gao_rl_alpha_reinforce_no_kl / gao_rl_beta_reinforce_no_kl - 1) < 3",
        "rloo_gold_final > ppo_gold_final + 0.05",  # at this budget the critic-free RLOO beats PPO
        # the KL's placement (k1 in the reward vs k3 in the loss, same beta) changes little here ...
        "abs(rloo_k3_in_loss_gold_final - rloo_gold_final) < 0.1 and abs(rloo_k3_in_loss_kl_final - rloo_kl_final) < 1.0",
        "grpo_kl_final > 1.4 * max(rloo_kl_final, dr_grpo_kl_final)",  # ... GRPO's normalisations move it farther
        "grpo_length_final > max(dr_grpo_length_final, rloo_length_final)",  # and its completions grow longer
        "all(a > b for a, b in zip(dpo_kl, dpo_kl[1:]))",  # a larger DPO beta (increasing order), a smaller KL
        "dpo_no_ref_length_corr < -0.8",  # without the reference, DPO's "reward" is mostly length
        "all(a < b for a, b in zip(bon_gold, bon_gold[1:]))",  # best-of-n's gold rises with n
        "all(k <= b + 0.05 for k, b in zip(bon_kl_est, bon_kl_bound))",  # its KL is at most the bound (+ MC noise)
        "all(k < 0.6 * b for k, b in zip(bon_kl_passfail[1:], bon_kl_bound[1:]))",  # far below it for a coarse judge
        "gao_bon_alpha > 0 and gao_bon_max_residual < 0.03",  # Gao et al.'s best-of-n form fits the curve
    ],
}

#: The notebooks whose artefacts each one reads (checkpoints, the preference file).
#: A notebook not listed here is taken to need every notebook before it.
NEEDS: dict[str, list[str]] = {
    "01": [],
    "02": [],
    "03": ["01"],  # base checkpoint
    "04": ["03"],  # SFT checkpoint to sample from
    "05": ["03", "04"],  # SFT backbone, preference data
    "06": ["03", "05"],  # SFT policy, reward model
    "07": ["03", "04", "05", "06"],  # SFT, preferences (relabelled, ensemble), reward model, RLHF policy
    "08": ["03", "04", "05"],  # SFT, preferences, reward model
    "09": ["03", "05", "06"],  # SFT; notebook 05's reward model and 06's policy for comparison
}

#: Names a check may use besides the figures.
_CHECK_FUNCTIONS = {"abs": abs, "min": min, "max": max, "len": len, "all": all, "any": any, "zip": zip, "math": math}


class CourseRuns:
    """Runs course notebooks on demand, in order, each at most once, and remembers the results."""

    def __init__(
        self, out_dir: Path, scale: str, timeout: float | None, env: dict[str, str], notebooks_dir: Path = NOTEBOOKS_DIR
    ) -> None:
        self.out_dir, self.scale, self.timeout, self.env = out_dir, scale, timeout, env
        self.notebooks = {p.stem[:2]: p for p in find_notebooks(notebooks_dir)}
        self.runs: dict[str, NotebookRun] = {}

    def needs(self, number: str) -> list[str]:
        before = [n for n in self.notebooks if n < number]
        return NEEDS.get(number, before)

    def get(self, number: str) -> NotebookRun:
        """The run of notebook ``number``; runs what it needs first. Never runs one twice."""
        if number in self.runs:
            return self.runs[number]
        path = self.notebooks[number]
        for dep in self.needs(number):
            if dep not in self.notebooks:
                why = f"not run: it needs {dep}_{COURSE.get(dep, 'notebook')}, which does not exist yet"
            else:
                dep_run = self.get(dep)
                if dep_run.ok:
                    continue
                why = f"not run: it needs {dep_run.name}, which {dep_run.status.replace('not run', 'was not run')}"
            self.runs[number] = NotebookRun(name=path.stem, path=str(path), scale=self.scale, error=why)
            return self.runs[number]
        self.runs[number] = run_notebook(path, self.scale, self.out_dir, timeout=self.timeout, env=self.env)
        return self.runs[number]


@pytest.fixture(scope="session")
def course(tmp_path_factory) -> CourseRuns:
    root = tmp_path_factory.mktemp("course")
    env = {"RLHF_CHECKPOINTS": str(root / "checkpoints"), "RLHF_FEEDBACK": str(root / "feedback")}
    timeout = float(os.environ.get("RLHF_NOTEBOOK_TIMEOUT", "900"))
    return CourseRuns(root / "runs", os.environ.get("RLHF_TEST_SCALE", "quick"), timeout, env)


def failed_checks(checks: list[str], figures: dict) -> list[str]:
    """The checks that do not hold, each with the figures it used (or what is missing)."""
    failures = []
    for check in checks:
        try:
            held = eval(check, {"__builtins__": {}, **_CHECK_FUNCTIONS}, dict(figures))  # noqa: S307 (our own table)
        except NameError as exc:
            have = ", ".join(sorted(figures)) or "nothing"
            failures.append(f"`{check}`: the notebook did not report {exc.name!r} (it reported: {have})")
            continue
        if not held:
            names = set(re.findall(r"[A-Za-z_]\w*", check))
            used = {k: v for k, v in figures.items() if k in names}
            failures.append(f"`{check}` is false with {used}")
    return failures


def _ids() -> list[str]:
    existing = {p.stem[:2]: p.stem for p in find_notebooks(NOTEBOOKS_DIR)}
    numbers = sorted(set(COURSE) | set(CHECKS) | set(existing))
    return [existing.get(n, f"{n}_{COURSE.get(n, 'notebook')}") for n in numbers]


@pytest.mark.notebook
@pytest.mark.parametrize("name", _ids())
def test_notebook_runs_and_its_claims_hold(name, course):
    number = name[:2]
    if number not in course.notebooks:
        pytest.skip(f"notebooks/{name}.ipynb does not exist yet")
    run = course.get(number)
    if run.status == "not run":
        pytest.skip(f"{run.name} {run.error}")
    assert run.ok, run.describe_failure()
    failures = failed_checks(CHECKS.get(number, []), run.figures)
    assert not failures, f"{run.name} (executed copy: {run.executed_path}):\n" + "\n".join(failures)


def test_failed_checks_names_missing_figures_and_values():
    figures = {"final_loss": 3.0, "initial_loss": 2.0}
    assert failed_checks(["final_loss < 4", "abs(final_loss - 3) < 1e-9"], figures) == []
    (bad, missing) = failed_checks(["final_loss < initial_loss", "reward > 0"], figures)
    assert "is false with {'final_loss': 3.0, 'initial_loss': 2.0}" in bad
    assert "did not report 'reward' (it reported: final_loss, initial_loss)" in missing


def test_a_failed_notebook_skips_those_that_need_it(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for name, source in [("01_base", "1 / 0"), ("02_alone", "x = 1"), ("03_needs_base", "y = 2")]:
        nbformat.write(new_notebook(cells=[new_code_cell(source)]), nbs / f"{name}.ipynb")
    course = CourseRuns(tmp_path / "runs", "quick", 60, {}, notebooks_dir=nbs)
    third = course.get("03")  # runs 01 first (NEEDS), which fails
    assert third.status == "not run" and third.error == "not run: it needs 01_base, which failed"
    assert course.runs["01"].status == "failed" and "02" not in course.runs
    assert course.get("02").ok
    assert course.get("01") is course.runs["01"]  # never run twice


def test_a_notebook_whose_input_does_not_exist_yet_is_not_run(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), tmp_path / "05_reward.ipynb")
    course = CourseRuns(tmp_path / "runs", "quick", 60, {}, notebooks_dir=tmp_path)
    run = course.get("05")
    assert run.status == "not run"
    assert run.error == "not run: it needs 03_supervised_finetuning, which does not exist yet"


READER = "Ada (scripted test reader)"
N_READER = 100


@pytest.mark.notebook
def test_reader_labels_flow_through_05_and_06(course, tmp_path):
    """A preference store holding reader labels (scripted: the first 100 judgements of notebook 04's
    file, signed with a person's name): notebooks 05 and 06 say how many of them they train on and the
    reader's own agreement with the reward model."""
    import shutil

    from rlhf_utils import feedback as fb

    for number in ("03", "04"):
        run = course.get(number)
        if not run.ok:
            pytest.skip(f"{run.name} did not run: {run.status}")
    src_fb, src_ck = Path(course.env["RLHF_FEEDBACK"]), Path(course.env["RLHF_CHECKPOINTS"])
    fb_dir, ck_dir = tmp_path / "feedback", tmp_path / "checkpoints"
    fb_dir.mkdir()
    shutil.copytree(src_ck / "sft", ck_dir / "sft")
    records = fb.load_records(src_fb / "preferences.jsonl")
    decisive = [i for i, r in enumerate(records) if r["kind"] == "pair" and r["choice"] in ("a", "b")][:N_READER]
    records = [dict(r, annotator=READER) if i in set(decisive) else r for i, r in enumerate(records)]
    fb.write_preferences(fb_dir / "preferences.jsonl", records)
    env = {"RLHF_FEEDBACK": str(fb_dir), "RLHF_CHECKPOINTS": str(ck_dir)}
    runs = {}
    for number in ("05", "06"):
        runs[number] = run_notebook(course.notebooks[number], course.scale, tmp_path / "runs", timeout=course.timeout,
                                    env=env)
        assert runs[number].ok, runs[number].describe_failure()
    f5, f6 = runs["05"].figures, runs["06"].figures
    assert f5["n_reader_labels"] == f6["n_reader_labels"] == N_READER
    assert 0.6 * N_READER <= f5["n_reader_train_labels"] == f6["n_reader_train_labels"] < N_READER
    assert f5["n_reader_heldout_labels"] == N_READER - f5["n_reader_train_labels"]
    assert f5["reader_rm_agreement"] > 0.6 and f6["reader_rm_agreement"] == pytest.approx(f5["reader_rm_agreement"])
    assert "your labels: 100 in all" in Path(runs["05"].executed_path).read_text()
