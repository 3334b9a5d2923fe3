"""The pairwise rating widget in a real browser: JupyterLab + headless Chromium (Playwright).

Starts JupyterLab on 127.0.0.1 (a free port, no token) in a temporary root folder that
holds one small notebook, opens it in Debian's Chromium, runs the widget cell, clicks
and types like a reader, and checks the store, the progress label, and the resume after
a kernel restart. Screenshots go to ``test-artifacts/``.

The notebook has the pairwise widget and, below it, the score widget on the same store (as
notebook 04). The reader types their name once, in the pairwise widget; the score widget takes
the same name, and after a kernel restart both widgets greet the same rater, with their own
progress, and resume without the name being typed again (issue 13).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import ARTIFACTS, REPO, jupyterlab, open_notebook, restart_kernel, run_first_cell

from rlhf_utils.feedback import FeedbackStore, live_judgements
from rlhf_utils.rating import PairwiseSession

pytestmark = pytest.mark.browser

PAIRS = [
    ("i watched this film .", "the acting was great .", "the acting was awful ."),
    ("i read this book .", "the plot was lovely . i loved it .", "the plot was dull . i hated it ."),
    ("i ate at this place .", "the pasta was wonderful .", "the pasta was was ."),
    ("i heard this album .", "the songs were fantastic .", "the songs were boring ."),
    ("i saw this film .", "overall , it was brilliant .", "overall , it was terrible ."),
]

READER_NAME = "Ada"


def _widget_cell(store: Path) -> str:
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from rlhf_utils.rating import PairwiseSession\n"
        "from rlhf_utils.widgets import rating_widget\n"
        f"pairs = {PAIRS!r}\n"
        f"session = PairwiseSession(pairs, {str(store)!r}, repeat_every=0, seed=0)\n"
        "rating_widget(session)\n"
    )


def _score_cell(store: Path) -> str:
    return (
        "from rlhf_utils.rating import ScoreSession\n"
        f"score_session = ScoreSession([(p, a) for p, a, _ in pairs[:2]], {str(store)!r})\n"
        "rating_widget(score_session)\n"
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    store = root / "ratings.jsonl"
    with jupyterlab(root, "rate.ipynb", [_widget_cell(store), _score_cell(store)]) as url:
        yield url, root, store


def _run_widget_cell(page):
    """Run both cells (the pairwise widget, then the score widget); the pairwise Start button."""
    run_first_cell(page)
    page.get_by_role("button", name="Start rating").first.wait_for(timeout=60_000)
    page.keyboard.press("Shift+Enter")     # the score widget's cell
    page.wait_for_function("() => document.querySelectorAll('.rlhf-rate').length == 2", timeout=60_000)
    page.get_by_role("button", name="Start rating").nth(1).wait_for(timeout=60_000)
    return page.get_by_role("button", name="Start rating").first


def _widget(page, i: int):
    return page.locator(".rlhf-rate").nth(i)


def _name_box(page, i: int):
    return _widget(page, i).locator(".rlhf-guidelines input").first


def _status(page) -> str:
    return page.locator(".rlhf-status").first.inner_text()


def _message(page) -> str:
    return page.locator(".rlhf-message").first.inner_text()


def test_pairwise_widget_in_jupyterlab(lab, chromium_browser):
    url, root, store = lab
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium_browser.new_page(viewport={"width": 1300, "height": 900})
    page.set_default_timeout(60_000)
    try:
        open_notebook(page, url)
        start = _run_widget_cell(page)
        assert "How to judge" in page.locator(".rlhf-guidelines").first.inner_text()
        _name_box(page, 0).fill(READER_NAME)   # the reader's name, typed once
        page.screenshot(path=str(ARTIFACTS / "pairwise_widget_guidelines.png"), full_page=True)
        start.click()
        # a missing widget extension shows plain text "VBox(...)": insist on real buttons
        a_better = page.get_by_role("button", name="A is better [1]")
        a_better.wait_for(state="visible")
        assert page.get_by_role("button", name="Both bad [4]").is_visible()
        a_better.click()
        page.wait_for_function("() => document.querySelector('.rlhf-status').innerText.startsWith('1 of 5')")
        a_better.click()
        page.wait_for_function("() => document.querySelector('.rlhf-status').innerText.startsWith('2 of 5')")
        page.get_by_role("button", name="Tie [3]").click()
        page.wait_for_function("() => document.querySelector('.rlhf-status').innerText.startsWith('3 of 5')")
        page.locator(".rlhf-keys input").first.click()
        page.keyboard.press("2")
        page.wait_for_function("() => document.querySelector('.rlhf-status').innerText.startsWith('4 of 5')")
        page.get_by_role("button", name="Undo last [Backspace]").click()
        page.wait_for_function("() => document.querySelector('.rlhf-status').innerText.startsWith('3 of 5')")
        assert _status(page).startswith("3 of 5 done · 0 skipped")
        assert "Undone" in _message(page) and "Item 4 of 5" in _widget(page, 0).inner_text()
        page.screenshot(path=str(ARTIFACTS / "pairwise_widget.png"), full_page=True)

        # the store: exactly the expected judgements, the A/B swap resolved
        swapped = [e.swapped for e in PairwiseSession(PAIRS, root.parent / "scratch.jsonl", repeat_every=0, seed=0).entries]
        records = FeedbackStore(store).records()
        assert [r["kind"] for r in records] == ["pair", "pair", "pair", "pair", "undo"]
        live = live_judgements(records)
        assert [(r["prompt"], r["choice"]) for r in live] == [
            (PAIRS[0][0], "b" if swapped[0] else "a"),
            (PAIRS[1][0], "b" if swapped[1] else "a"),
            (PAIRS[2][0], "tie"),
        ]
        assert records[3]["choice"] == ("a" if swapped[3] else "b")   # key 2 = the right side
        assert records[4]["supersedes"] == records[3]["id"]
        assert all(r["annotator"] == READER_NAME and r["seconds"] > 0 for r in live)

        # the score widget below rates as the same reader, without the name typed again
        page.wait_for_function(
            "() => document.querySelectorAll('.rlhf-rate')[1].querySelector('.rlhf-guidelines input').value == "
            f"{READER_NAME!r}")
        _widget(page, 1).get_by_role("button", name="Start rating").click()
        five = page.get_by_role("button", name="5 very satisfied [5]")
        five.wait_for(state="visible")
        five.click()
        page.wait_for_function("() => document.querySelectorAll('.rlhf-status')[1].innerText.startsWith('1 of 2')")
        scored = FeedbackStore(store).records()[-1]
        assert (scored["kind"], scored["score"], scored["annotator"]) == ("score", 5, READER_NAME)

        # restart the kernel; the widget resumes where it stopped
        restart_kernel(page)
        start = _run_widget_cell(page)
        # before anyone types: both widgets greet the same reader, each with their own progress
        assert _name_box(page, 0).input_value() == READER_NAME == _name_box(page, 1).input_value()
        assert _status(page).startswith("3 of 5 done") and f"rater: {READER_NAME}" in _status(page)
        assert page.locator(".rlhf-status").nth(1).inner_text().startswith("1 of 2 done")
        start.click()                          # the name is not typed again
        page.wait_for_function("() => document.querySelector('.rlhf-message') && "
                               "document.querySelector('.rlhf-message').innerText.includes('Resumed')")
        assert "Resumed at 3/5." in _message(page)
        # execution count 1 again: the kernel really was restarted
        assert page.locator(".jp-Cell .jp-InputArea-prompt").first.inner_text().strip() == "[1]:"
        assert _status(page).startswith("3 of 5 done")
        assert "Item 4 of 5" in _widget(page, 0).inner_text()
        page.screenshot(path=str(ARTIFACTS / "pairwise_widget_resumed.png"), full_page=True)
        assert len(FeedbackStore(store).records()) == 6     # resuming wrote nothing
        assert {r["annotator"] for r in FeedbackStore(store).records()} == {READER_NAME}
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "pairwise_widget_failure.png"), full_page=True)
        (ARTIFACTS / "pairwise_widget_lab.log").write_text((root / "lab.log").read_text())
        raise
    finally:
        page.close()
