"""The live loop (notebook 09) in a real browser: JupyterLab + headless Chromium (Playwright).

One cell builds a tiny policy and a :class:`rlhf_utils.live_loop.LiveLoop` on it and shows the live
widget (the pairwise widget and the panel). The reader types a name and clicks ``k`` verdicts; the
loop's worker thread then takes reward-model steps and a PPO step while the page stays live, and the
new pairs, written by the updated policy, appear in the page (the widget's count of pairs grows and
the panel shows round 1). After a kernel restart the same cell resumes: round 1, the same labels,
the same rater, the position after the last click. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lab_helpers import ARTIFACTS, REPO, jupyterlab, open_notebook, restart_kernel, run_first_cell

from rlhf_utils.feedback import FeedbackStore, live_judgements

pytestmark = pytest.mark.browser

READER = "Grace"
K, FIRST, PER_ROUND = 4, 6, 4


def _loop_cell(root: Path) -> str:
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import torch\n"
        "from rlhf_utils import lm\n"
        "from rlhf_utils.config import LiveLoopConfig, LMConfig, PPOConfig\n"
        "from rlhf_utils.live_loop import LiveLoop\n"
        "from rlhf_utils.widgets import live_loop_widget\n"
        "from rlhf_utils.world import World\n"
        "world = World(0)\n"
        "tokenizer = lm.train_tokenizer(world.corpus(500, seed=11))\n"
        "torch.manual_seed(0)\n"
        "policy = lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32, seed=0), tokenizer).eval()\n"
        f"cfg = LiveLoopConfig(k={K}, rm_steps=2, rm_batch_size=8, ppo_steps=1, ppo_batch_size=8, first_pairs={FIRST},\n"
        f"                     pairs_per_round={PER_ROUND}, candidate_pool=8, ensemble_size=2, n_normalise=8,\n"
        "                     n_eval_pairs=8, n_labels=12)\n"
        "loop = LiveLoop(policy, tokenizer, world.prompts(40, seed=12), cfg, PPOConfig(max_new_tokens=10),\n"
        f"                {str(root / 'state')!r}, {str(root / 'live.jsonl')!r}, gold=world.gold_rewards)\n"
        "session = loop.session()\n"
        "loop.start()\n"
        "live_loop_widget(loop, session)\n"
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    with jupyterlab(root, "live.ipynb", [_loop_cell(root)]) as url:
        yield url, root


def _panel(page) -> str:
    return page.locator(".rlhf-live-panel").first.inner_text()


def _wait_text(page, selector: str, prefix: str, timeout_ms: int = 120_000) -> None:
    page.wait_for_function(f"() => {{ const e = document.querySelector({selector!r}); "
                           f"return e && e.innerText.trim().startsWith({prefix!r}); }}", timeout=timeout_ms)


def test_live_loop_in_jupyterlab(lab, chromium_browser):
    url, root = lab
    store = root / "live.jsonl"
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium_browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        open_notebook(page, url)
        run_first_cell(page)
        start = page.get_by_role("button", name="Start rating").first
        start.wait_for(timeout=120_000)
        assert "waiting for 4 more label(s)" in _panel(page)
        page.locator(".rlhf-rate .rlhf-guidelines input").first.fill(READER)
        start.click()
        a_better = page.get_by_role("button", name="A is better [1]")
        a_better.wait_for(state="visible")
        for i in range(1, K + 1):  # k verdicts, each waited for: one line in the store per click
            a_better.click()
            _wait_text(page, ".rlhf-status", f"{i} of ")
        # the worker trains (reward model + PPO) while the page stays live; the round's pairs arrive
        _wait_text(page, ".rlhf-live-round", "1")
        _wait_text(page, ".rlhf-status", f"{K} of {FIRST + PER_ROUND}")
        panel = _panel(page)
        assert f"labels: {K} ({K} from you" in panel and "gold reward" in panel
        page.screenshot(path=str(ARTIFACTS / "live_loop_round1.png"), full_page=True)

        records = FeedbackStore(store).records()
        assert len(records) == K and {r["annotator"] for r in records} == {READER}
        assert len(live_judgements(records)) == K
        state = json.loads((root / "state" / "loop_state.json").read_text())
        assert state["round"] == 1 and len(state["offered"]) == FIRST + PER_ROUND
        assert state["history"][0]["n_labels"] == K and state["history"][0]["ppo_step"] == 1
        # rate one new pair (from the updated policy) before the restart
        a_better.click()
        _wait_text(page, ".rlhf-status", f"{K + 1} of ")

        restart_kernel(page)
        run_first_cell(page)
        page.get_by_role("button", name="Start rating").first.wait_for(timeout=120_000)
        assert page.locator(".rlhf-rate .rlhf-guidelines input").first.input_value() == READER
        _wait_text(page, ".rlhf-live-round", "1")
        panel = _panel(page)
        assert f"labels: {K + 1} ({K + 1} from you" in panel and "1 queued" in panel
        assert page.locator(".rlhf-status").first.inner_text().startswith(f"{K + 1} of {FIRST + PER_ROUND} done")
        assert page.locator(".jp-Cell .jp-InputArea-prompt").first.inner_text().strip() == "[1]:"  # a new kernel
        page.get_by_role("button", name="Start rating").first.click()
        page.wait_for_function("() => document.querySelector('.rlhf-message').innerText.includes('Resumed')")
        page.screenshot(path=str(ARTIFACTS / "live_loop_resumed.png"), full_page=True)
        assert len(FeedbackStore(store).records()) == K + 1  # resuming wrote nothing
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "live_loop_failure.png"), full_page=True)
        (ARTIFACTS / "live_loop_lab.log").write_text((root / "lab.log").read_text())
        raise
    finally:
        page.close()
