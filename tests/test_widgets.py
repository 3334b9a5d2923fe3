"""Rating-session logic, driven without a screen (rlhf_utils.rating), and the ipywidgets wiring
(rlhf_utils.widgets)."""

from __future__ import annotations

import json

import pytest

from rlhf_utils.feedback import FeedbackStore, FeedbackStoreError, FeedbackWarning, SCHEMA_VERSION, pair_record
from rlhf_utils.rating import BACKSPACE, PairwiseSession, ScoreSession, highlight_diff
from rlhf_utils.widgets import KEY_SENTINEL, rating_widget, read_key_box, widget_frontend

PAIRS = [(f"prompt {i} .", f"the film was great {i} .", f"the film was awful {i} .") for i in range(12)]


class Clock:
    """A fake clock: each reading is 2 s after the previous one."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 2.0
        return self.t


def _session(tmp_path, pairs=PAIRS, **kw):
    kw.setdefault("repeat_every", 0)
    return PairwiseSession(pairs, tmp_path / "ratings.jsonl", clock=Clock(), **kw)


def _live(tmp_path, **kw):
    return FeedbackStore(tmp_path / "ratings.jsonl").judgements(**kw)


def test_swap_is_resolved_to_the_pairs_own_order(tmp_path):
    s = _session(tmp_path)
    s.start()
    assert {e.swapped for e in s.entries} == {True, False}  # both orders occur
    for _ in range(len(PAIRS)):
        entry = s.current
        view = s.view()
        shown_left = entry.completions[1] if entry.swapped else entry.completions[0]
        assert view["left"].replace("<mark>", "").replace("</mark>", "") == shown_left
        s.choose("A")  # always the left side
    for r in _live(tmp_path):
        # the left-shown completion is b exactly when swapped
        assert r["choice"] == ("b" if r["swapped"] else "a")


def test_progress_undo_and_correction_records(tmp_path):
    s = _session(tmp_path)
    s.start()
    s.choose("A")
    s.choose("A")
    s.choose("tie")
    s.key("2")
    s.key(BACKSPACE)                     # undo the "B" just given
    assert s.position == 3 and "Undone" in s.message
    assert s.progress_text().startswith("3 of 12 done · 0 skipped · 2.0 s per judgement · rater: you")
    records = FeedbackStore(tmp_path / "ratings.jsonl").records()
    assert [r["kind"] for r in records] == ["pair"] * 4 + ["undo"]
    assert records[-1]["supersedes"] == records[3]["id"]
    live = _live(tmp_path)
    assert len(live) == 3 and [r["position"] for r in live] == [0, 1, 2]
    assert all(r["seconds"] == 2.0 and r["annotator"] == "you" for r in live)
    # go back and change a verdict: a re-rating that supersedes the first one
    s.go_to(0)
    assert "you said" in s.message
    s.choose("skip")
    assert s.position == 3  # back to the first unjudged
    live = _live(tmp_path)
    assert len(live) == 3 and live[-1]["choice"] == "skip" and live[-1]["supersedes"] == records[0]["id"]
    assert s.n_skipped == 1


def test_resume_after_restart(tmp_path):
    s = _session(tmp_path)
    s.start("alice")
    for v in ["A", "B", "both_bad"]:
        s.choose(v)
    again = _session(tmp_path)               # a new kernel, same pairs, same store
    assert again.start("alice") == "Resumed at 3/12."
    assert again.position == 3 and again.entries[3].swapped == s.entries[3].swapped
    assert _session(tmp_path).annotator == "alice"     # the name is remembered
    fresh = _session(tmp_path)               # another rater starts from the beginning
    fresh.start("bob")
    assert fresh.position == 0 and fresh.n_done == 0


def test_same_pair_rated_in_two_sessions_is_not_duplicated(tmp_path):
    one, two = _session(tmp_path), _session(tmp_path)
    one.start()
    two.start()
    one.choose("A")
    assert two.choose("B") is None           # item 1 was judged meanwhile by the other kernel
    assert "already judged" in two.message and two.position == 1
    assert len(_live(tmp_path)) == 1
    assert len(FeedbackStore(tmp_path / "ratings.jsonl").records()) == 1


def test_duplicate_pairs_dropped_and_no_samples(tmp_path):
    s = _session(tmp_path, pairs=PAIRS[:3] + PAIRS[:1])
    assert len(s.entries) == 3 and "duplicate" in s.message
    empty = _session(tmp_path, pairs=[])
    assert empty.choose("A") is None and "No samples" in empty.message
    empty.start()
    assert "No samples" in empty.message
    s2 = _session(tmp_path)
    assert s2.choose("A") is None and "Start rating" in s2.message  # clicked before starting
    assert not (tmp_path / "ratings.jsonl").read_text()


def test_unwritable_store_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(FeedbackStoreError, match="cannot write the feedback store"):
        _session(tmp_path, pairs=PAIRS).__class__(PAIRS, tmp_path / "f" / "x.jsonl")


def test_failed_write_loses_nothing(tmp_path, monkeypatch):
    s = _session(tmp_path)
    s.start()
    s.choose("A")

    def full(*_a, **_k):
        raise FeedbackStoreError(28, "could not save 1 judgement(s): the disk is full")

    monkeypatch.setattr(s.store, "append", full)
    with pytest.raises(FeedbackStoreError):
        s.choose("B")
    assert s.position == 1 and s.n_done == 1     # the item stays on screen, to rate again
    monkeypatch.undo()
    s.choose("B")
    assert len(_live(tmp_path)) == 2


def test_newer_schema_line_in_store_warns(tmp_path):
    path = tmp_path / "ratings.jsonl"
    path.write_text(json.dumps(dict(pair_record(*PAIRS[0], "a"), schema=SCHEMA_VERSION + 1)) + "\n")
    with pytest.warns(FeedbackWarning, match="upgrade rlhf_utils"):
        s = _session(tmp_path, annotator="you")
    with pytest.warns(FeedbackWarning, match="upgrade rlhf_utils"):
        s.start()
    assert "1 line(s) of the store were skipped" in s.message and "upgrade rlhf_utils" in s.message
    s.choose("A")                                   # the store still takes new judgements
    with pytest.warns(FeedbackWarning):
        assert len(_live(tmp_path)) == 1


def test_calibration_pairs_and_score(tmp_path):
    cal = [("c1 .", "it was great .", "it was awful .", "a"), ("c2 .", "bad bad .", "good .", "b")]
    s = _session(tmp_path, calibration=cal)
    s.start()
    assert [e.role for e in s.entries[:2]] == ["calibration", "calibration"]
    right = s.current
    s.choose("B" if right.swapped else "A")        # right answer (a)
    s.choose("B" if s.current.swapped else "A")    # wrong answer (gold is b)
    assert s.calibration_score() == (1, 2)
    assert "calibration: 1/2 right" in s.summary_text()
    live = _live(tmp_path)
    assert [r["gold"] for r in live] == ["a", "b"] and all(r["calibration"] for r in live)


def test_blind_repeats(tmp_path):
    s = PairwiseSession(PAIRS, tmp_path / "ratings.jsonl", repeat_every=10, repeat_gap=3, clock=Clock())
    roles = [e.role for e in s.entries]
    assert roles.count("repeat") == 1 and len(s.entries) == 13      # ~one in ten
    rep = next(e for e in s.entries if e.role == "repeat")
    first = next(e for e in s.entries if e.key == rep.key and e.role == "item")
    assert rep.index - first.index == 4                               # 3 items in between
    s.start()
    while s.current is not None:
        e = s.current
        # agree with yourself on the pair's own order: always prefer completion a
        s.choose("B" if e.swapped else "A")
    live = _live(tmp_path)
    assert len(live) == 13 and sum(bool(r.get("repeat")) for r in live) == 1
    agree = s.self_agreement()
    assert agree.n == 1 and agree.raw == 1.0
    assert "self-agreement on 1 repeat(s): 100%" in s.summary_text()


def test_undo_after_restart_uses_the_store(tmp_path):
    s = _session(tmp_path)
    s.start()
    s.choose("A")
    s.choose("B")
    again = _session(tmp_path)
    again.start()
    undone = again.undo()
    assert undone["position"] == 1 and again.position == 1 and len(_live(tmp_path)) == 1


def test_score_session(tmp_path):
    items = [(p, a) for p, a, _ in PAIRS[:4]]
    s = ScoreSession(items, tmp_path / "scores.jsonl", clock=Clock())
    s.start("carol")
    s.key("5")
    s.key("0")
    s.score(2)
    s.key(BACKSPACE)
    assert s.progress_text().startswith("2 of 4 done · 1 skipped")
    live = FeedbackStore(tmp_path / "scores.jsonl").judgements()
    assert [r["score"] for r in live] == [5, None] and all(r["kind"] == "score" for r in live)
    with pytest.raises(ValueError):
        s.score(6)


def test_highlight_diff_marks_only_differing_words():
    left, right = highlight_diff("the film was great .", "the film was <b>awful</b> .")
    assert left == "the film was <mark>great</mark> ."
    assert right == "the film was <mark>&lt;b&gt;awful&lt;/b&gt;</mark> ."
    assert highlight_diff("a b", "a b") == ("a b", "a b")


def test_read_key_box():
    assert read_key_box(KEY_SENTINEL) is None
    assert read_key_box(KEY_SENTINEL + "2") == "2"
    assert read_key_box("⌨1 ") == "1"                # caret was in the middle
    assert read_key_box(KEY_SENTINEL[:-1]) == BACKSPACE
    assert read_key_box("") == BACKSPACE


def test_widget_buttons_and_key_box_drive_the_session(tmp_path):
    s = _session(tmp_path)
    box = rating_widget(s)
    buttons = {b.description: b for b in _walk(box) if type(b).__name__ == "Button"}
    assert {"A is better [1]", "B is better [2]", "Tie [3]", "Both bad [4]", "Skip [0]",
            "Undo last [Backspace]", "Start rating"} <= set(buttons)
    buttons["A is better [1]"].click()                 # before start: a message, nothing written
    assert "Start rating" in s.message and s.n_done == 0
    buttons["Start rating"].click()
    buttons["A is better [1]"].click()
    buttons["Tie [3]"].click()
    key_box = next(b for b in _walk(box) if "rlhf-keys" in getattr(b, "_dom_classes", ()))
    key_box.value = KEY_SENTINEL + "2"
    assert key_box.value == KEY_SENTINEL                # reset for the next key
    buttons["Undo last [Backspace]"].click()
    status = next(b for b in _walk(box) if "rlhf-status" in getattr(b, "_dom_classes", ()))
    assert "2 of 12 done" in status.value
    assert [r["choice"] for r in _live(tmp_path)] == [("b" if s.entries[0].swapped else "a"), "tie"]


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def test_widget_frontend_rule(monkeypatch):
    monkeypatch.setenv("RLHF_HEADLESS", "1")
    ok, reason = widget_frontend()
    assert not ok and "RLHF_HEADLESS" in reason
    monkeypatch.setenv("RLHF_HEADLESS", "0")
    ok, reason = widget_frontend()
    assert not ok and "not running in a Jupyter kernel" in reason   # pytest is not a kernel


def test_one_rater_per_store_shared_by_both_sessions_and_remembered_across_a_restart(tmp_path):
    """Issue 13: the score widget used to rate as "you" while the pairwise one rated as the
    reader, and after a restart the pairwise widget greeted whoever wrote the store's last line."""
    from rlhf_utils import feedback as fb
    from rlhf_utils.widgets import rating_widget

    store = tmp_path / "ratings.jsonl"
    pairs = PairwiseSession(PAIRS[:4], store, repeat_every=0, clock=Clock())
    scores = ScoreSession([(p, a) for p, a, _ in PAIRS[:2]], store, clock=Clock())
    box = rating_widget(scores)
    pairs.start("alice")
    assert scores.annotator == "alice"                                  # the other widget follows
    name_box = next(b for b in _walk(box) if getattr(b, "description", "") == "Your name:")
    assert name_box.value == "alice"                                    # and shows it
    pairs.choose("A")
    pairs.choose("B")
    scores.start()
    scores.score(5)                                                     # the store's last line
    fb._RATERS.clear()                                                  # a kernel restart
    again = PairwiseSession(PAIRS[:4], store, repeat_every=0)
    assert again.annotator == "alice" and again.progress_text().startswith("2 of 4 done")
    assert again.start() == "Resumed at 2/4." and again.position == 2
    assert {r["annotator"] for r in FeedbackStore(store).records()} == {"alice"}


def test_a_store_from_before_the_rater_file_resumes_as_whoever_judged_its_items(tmp_path):
    from rlhf_utils import feedback as fb

    store = tmp_path / "ratings.jsonl"
    s = PairwiseSession(PAIRS[:4], store, repeat_every=0)
    s.start("bob")
    s.choose("A")
    FeedbackStore(store).append(fb.score_record("x .", "y .", 3, annotator="you"))  # last line: someone else
    (tmp_path / ("ratings.jsonl" + fb.RATER_SUFFIX)).unlink()
    fb._RATERS.clear()
    assert PairwiseSession(PAIRS[:4], store, repeat_every=0).annotator == "bob"
