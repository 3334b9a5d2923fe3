"""Rating sessions: the logic behind the rating widgets, with no display at all.

Logic and display are apart (STYLE.md, practice 10): :class:`PairwiseSession` and
:class:`ScoreSession` are plain classes that hold the queue, the position, the rater's
name, the timing, and the handlers (``choose``, ``score``, ``key``, ``undo``, ``go_to``).
They can be driven without a screen -- the unit tests and the headless course runner do
exactly that. :mod:`rlhf_utils.widgets` lays out stock ipywidgets and wires each button
to one of these handlers.

What a session does for the rater: **pairwise** -- the prompt once, completions A and B
side by side, the words where they differ marked; verdicts *A is better*, *B is better*,
*Tie*, *Both bad* (kept apart from a tie), *Skip*. Which completion is shown as A is a coin
flip seeded by the pair's key (stable across restarts), recorded as ``swapped``: the stored
``choice`` is in the pair's own order, so position bias is *measured*, not baked in.
**score** -- one completion and a 1-5 satisfaction score. **Undo last** retracts the latest
judgement with a correction record; **Back** goes to an earlier item, where a new verdict
supersedes the old one (the store is never rewritten). Progress, pace and the rater's name
are on screen and on every record. **The rater** is one per store, shared by both widgets
and remembered across kernel restarts (:class:`rlhf_utils.feedback.Rater`); items are keyed
by a hash of prompt and completions, so a new kernel resumes as the same rater where they
stopped ("Resumed at 37/200"). **Calibration** pairs with a known answer come first (never
one with an empty completion); about one pair in ten comes back later, **blind**, to
measure each rater's agreement with themself.
"""

from __future__ import annotations

import difflib
import hashlib
import html
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rlhf_utils.annotators import self_agreement
from rlhf_utils.checks import check_int, check_tuples
from rlhf_utils.feedback import (FeedbackStore, check_rater_name, item_key, live_judgements, pair_record, rater_of,
                                 score_record, undo_record)

VERDICTS = {"A": ("A is better", "1"), "B": ("B is better", "2"), "tie": ("Tie", "3"),  # verdict -> (button, key)
            "both_bad": ("Both bad", "4"), "skip": ("Skip", "0")}
BACKSPACE = "Backspace"
SCORE_LABELS = {1: "very unsatisfied", 2: "unsatisfied", 3: "neutral", 4: "satisfied", 5: "very satisfied"}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def highlight_diff(text_a: str, text_b: str) -> tuple[str, str]:
    """HTML of both texts with the words where they differ wrapped in ``<mark>``.

    ``difflib.SequenceMatcher`` over word tokens; everything is HTML-escaped.
    """
    words_a, words_b = text_a.split(), text_b.split()
    out_a, out_b = [], []
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        chunk_a = html.escape(" ".join(words_a[i1:i2]))
        chunk_b = html.escape(" ".join(words_b[j1:j2]))
        if tag == "equal":
            out_a.append(chunk_a)
            out_b.append(chunk_b)
        else:
            if chunk_a:
                out_a.append(f"<mark>{chunk_a}</mark>")
            if chunk_b:
                out_b.append(f"<mark>{chunk_b}</mark>")
    return " ".join(out_a), " ".join(out_b)


def _coin(*parts: Any) -> bool:
    """A deterministic fair coin from its arguments (stable across kernels)."""
    return hashlib.sha256(repr(parts).encode()).digest()[0] & 1 == 1


EMPTY = "<i class='rlhf-empty'>(empty)</i>"
"""What an empty completion shows as (an empty box would look like a display fault)."""


def _sources(sources: Any, n: int, what: str) -> list[dict]:
    listed = [dict(sources or {})] * n if isinstance(sources, dict) or sources is None else list(sources)
    if len(listed) != n or not all(isinstance(x, dict) for x in listed):
        raise ValueError(f"sources must be one dict for all, or one dict per {what}: got {len(listed)} "
                         f"item(s) for {n} {what}(s)")
    return listed


# --------------------------------------------------------------------------------------
# Session logic (no display)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One thing to judge, at one place in the queue."""

    index: int
    """position in the queue (0-based)"""
    key: str
    """item key: hash of prompt and completions (:func:`rlhf_utils.feedback.item_key`)"""
    prompt: str
    completions: tuple[str, ...]
    """(a, b) in the pair's own order, or (completion,) for a score item"""
    swapped: bool = False
    """pairwise: b is shown first (as "A", on the left)"""
    role: str = "item"
    """"item", "calibration" (gold answer known) or "repeat" (blind repeat of an earlier item)"""
    gold: str | None = None
    """calibration pairs: the right answer, "a" or "b", in the pair's own order"""
    source: dict = field(default_factory=dict)
    """model and sampling settings that made the completions"""


class Session:
    """What pairwise and score sessions share: queue, position, store, undo, resume."""

    kind = "?"
    keys: dict[str, Any] = {}

    def __init__(self, entries: list[Entry], store: FeedbackStore | str | os.PathLike,
                 annotator: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.store = store if isinstance(store, FeedbackStore) else FeedbackStore(store)
        self.entries = entries
        # one rater per store, shared with the other widget and remembered across restarts
        self.rater = rater_of(self.store)
        if annotator is not None:
            self.rater.set(annotator)
        self.rater.resolve(self.store, {e.key for e in entries})
        self.rater.listen(self._rater_changed)
        self.on_rater_change: list[Callable[[], None]] = []  # display callbacks (the name box)
        self.store_warnings: list[str] = []
        self.clock = clock
        self.started = False
        self.position = 0
        self.message = "" if entries else self._no_samples()
        self.done: dict[tuple[str, bool], dict] = {}  # (item, repeat) -> live record of this rater
        self._shown_at = clock()
        self._store_stamp: tuple | None = None
        self.on_change: list[Callable[[], None]] = []  # display callbacks
        self.refresh()  # progress is right even before "Start rating"

    # ---- state -----------------------------------------------------------------------

    @staticmethod
    def _no_samples() -> str:
        return "No samples to rate yet: run the cell that samples completions first."

    @property
    def annotator(self) -> str:
        """The rater's name (shared by every session on this store)."""
        return self.rater.name

    def _rater_changed(self) -> None:
        """The rater's name was changed (here or in another widget): show their own progress."""
        self._store_stamp = None
        self.refresh()
        if self.started and self.entries:
            self._move(self._first_undone())
            self.message = f"Rating as {self.annotator}: {self.n_done}/{len(self.entries)} done."
        for callback in list(self.on_rater_change):
            callback()
        self._changed()

    def _dkey(self, entry: Entry) -> tuple[str, bool]:
        return (entry.key, entry.role == "repeat")

    def _stamp(self) -> tuple:
        try:
            st = os.stat(self.store.path)
            return (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return (0, 0)

    def refresh(self) -> None:
        """Reload this rater's live judgements if the store file changed."""
        stamp = self._stamp()
        if stamp == self._store_stamp:
            return
        keys = {self._dkey(e) for e in self.entries}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = self.store.records()
        self.store_warnings = [str(w.message) for w in caught]
        for w in caught:  # passed on, so they show in the notebook too
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        live = live_judgements(records, annotator=self.annotator, kind=self.kind)
        self.done = {}
        for r in live:
            k = (r["item"], bool(r.get("repeat", False)))
            if k in keys:
                self.done[k] = r
        self._store_stamp = stamp

    @property
    def current(self) -> Entry | None:
        """The entry on screen (None before start, or when all are done)."""
        if not self.started or self.position >= len(self.entries):
            return None
        return self.entries[self.position]

    def is_done(self, entry: Entry) -> bool:
        return self._dkey(entry) in self.done

    def verdict_of(self, entry: Entry) -> dict | None:
        return self.done.get(self._dkey(entry))

    def _skipped(self, record: dict) -> bool:
        raise NotImplementedError

    @property
    def n_done(self) -> int:
        return len(self.done)

    @property
    def n_skipped(self) -> int:
        return sum(self._skipped(r) for r in self.done.values())

    def seconds_per_judgement(self) -> float:
        secs = [r["seconds"] for r in self.done.values() if isinstance(r.get("seconds"), (int, float))]
        return float("nan") if not secs else sum(secs) / len(secs)

    def progress_text(self) -> str:
        pace = self.seconds_per_judgement()
        pace_txt = "–" if pace != pace else f"{pace:.1f} s"
        return (f"{self.n_done} of {len(self.entries)} done · {self.n_skipped} skipped · "
                f"{pace_txt} per judgement · rater: {self.annotator}")

    def _first_undone(self, start: int = 0) -> int:
        for i in list(range(start, len(self.entries))) + list(range(0, start)):
            if not self.is_done(self.entries[i]):
                return i
        return len(self.entries)

    def _move(self, position: int) -> None:
        self.position = position
        self._shown_at = self.clock()

    def _changed(self) -> None:
        for callback in list(self.on_change):
            callback()

    # ---- handlers --------------------------------------------------------------------

    def start(self, annotator: str | None = None) -> str:
        """Leave the guidelines: set the rater's name, load their judgements, resume."""
        if annotator is not None and (not isinstance(annotator, str) or annotator.strip()):
            self.rater.set(check_rater_name(annotator))  # a blank name box keeps the name
        self.started = True
        self._store_stamp = None
        self.refresh()
        if not self.entries:
            self.message = self._no_samples()
        else:
            self._move(self._first_undone())
            if self.n_done:
                self.message = f"Resumed at {self.n_done}/{len(self.entries)}."
            else:
                self.message = f"Welcome, {self.annotator}: {len(self.entries)} items to judge."
            if self.position >= len(self.entries):
                self.message += " All done: run the next cell."
        if self.store_warnings:
            self.message += (f" Note: {len(self.store_warnings)} line(s) of the store were skipped, e.g. "
                             f"{self.store_warnings[0]}")
        self._changed()
        return self.message

    def _guard(self) -> Entry | None:
        """The entry a verdict applies to, or None (and a message) if there is none."""
        if not self.entries:
            self.message = self._no_samples()
        elif not self.started:
            self.message = "Read the guidelines and press “Start rating” first."
        elif self.current is None:
            self.message = "All done: nothing left to judge. Use ◀ Back to change an earlier verdict."
        else:
            return self.current
        self._changed()
        return None

    def _record(self, entry: Entry, **fields: Any) -> dict:
        raise NotImplementedError

    def _judge(self, entry: Entry, **fields: Any) -> dict | None:
        """Write a judgement of ``entry`` (a re-rating if it was judged), then move on."""
        was_done = self.is_done(entry)
        self.refresh()
        previous = self.verdict_of(entry)
        if previous is not None and not was_done:
            # judged meanwhile by another kernel of the same rater: do not judge twice
            self.message = (f"Item {entry.index + 1} was already judged by {self.annotator} "
                            f"(at {previous['time']}, in another session): kept that verdict and moved on. "
                            "Use ◀ Back to change it.")
            self._move(self._first_undone(entry.index))
            self._changed()
            return None
        extra: dict[str, Any] = {"seconds": round(self.clock() - self._shown_at, 3),
                                 "position": entry.index}
        if entry.role == "repeat":
            extra["repeat"] = True
        if entry.role == "calibration":
            extra["calibration"] = True
            extra["gold"] = entry.gold
        if previous is not None:
            extra["supersedes"] = previous["id"]
        record = self._record(entry, **extra, **fields)
        self.store.append(record)  # raises FeedbackStoreError with a clear message: state unchanged
        self.done.pop(self._dkey(entry), None)
        self.done[self._dkey(entry)] = record  # dict order = order of the latest word
        self._store_stamp = self._stamp()
        self.message = (f"Changed your verdict on item {entry.index + 1}." if previous is not None
                        else f"Saved ({self.describe(record)}).")
        self._move(self._first_undone(entry.index))
        if self.position >= len(self.entries):
            self.message += " All done: thank you! Run the next cell."
        self._changed()
        return record

    def undo(self) -> dict | None:
        """Retract this rater's latest judgement (a correction record) and show it again."""
        if not self.started:
            self.message = "Nothing to undo yet."
            self._changed()
            return None
        self.refresh()
        if not self.done:
            self.message = "Nothing to undo."
            self._changed()
            return None
        last = list(self.done.values())[-1]  # the latest word (see live_judgements)
        entry = next(e for e in self.entries if self._dkey(e) == (last["item"], bool(last.get("repeat"))))
        self.store.append(undo_record(last, annotator=self.annotator))
        del self.done[self._dkey(entry)]
        self._store_stamp = self._stamp()
        self._move(entry.index)
        self.message = f"Undone: your verdict on item {entry.index + 1} ({self.describe(last)}). Judge it again."
        self._changed()
        return last

    def go_to(self, index: int) -> None:
        """Show item ``index`` (0-based); a verdict there replaces the earlier one."""
        check_int("index", index, None, "the item's position, 0-based")
        if not self.started or not self.entries:
            self._guard()
            return
        index = max(0, min(index, len(self.entries) - 1))
        self._move(index)
        previous = self.verdict_of(self.entries[index])
        self.message = (f"Item {index + 1}: you said {self.describe(previous)}. Choose again to change it."
                        if previous else f"Item {index + 1}.")
        self._changed()

    def back(self) -> None:
        """Go to the previous item."""
        self.go_to(self.position - 1)

    def next_undone(self) -> None:
        """Go to the first item not judged yet."""
        if self.started:
            self._move(self._first_undone(self.position))
            self.message = ""
        self._changed()

    def key(self, key: str) -> None:
        """Act on one key: the verdict printed on a button, or Backspace (undo)."""
        if key == BACKSPACE:
            self.undo()
        elif key in self.keys:
            self._act(self.keys[key])
        else:
            self.message = f"Key {key!r} does nothing here ({', '.join(self.keys)} or Backspace)."
            self._changed()

    def _act(self, verdict: Any) -> None:
        raise NotImplementedError

    def describe(self, record: dict | None) -> str:
        raise NotImplementedError


class PairwiseSession(Session):
    """Pairwise A/B judgements of ``(prompt, completion_a, completion_b)`` pairs.

    ``calibration``: ``(prompt, a, b, gold)`` pairs with the right answer ``gold`` ("a"
    or "b") known, shown first. ``repeat_every``: every so many pairs, one comes back
    ``repeat_gap`` items later, blind (0 = never). ``sources`` (one dict per pair, or one
    for all) records the model and sampling settings. The display order of each pair is
    a seeded coin flip of its key: stable across kernel restarts.
    """

    kind = "pair"
    keys = {key: verdict for verdict, (_, key) in VERDICTS.items()}

    def __init__(self, pairs: Sequence[Sequence[str]], store, annotator: str | None = None, *,
                 calibration: Sequence[Sequence[str]] = (), repeat_every: int = 10, repeat_gap: int = 5,
                 sources: dict | Sequence[dict] | None = None, seed: int = 0, clock=time.monotonic):
        pairs = check_tuples("pairs", pairs, 3, "(prompt, completion_a, completion_b)")
        calibration = check_tuples("calibration", calibration, 4, "(prompt, completion_a, completion_b, gold)")
        sources = _sources(sources, len(pairs), "pair")
        repeat_every, repeat_gap = check_int("repeat_every", repeat_every, 0), check_int("repeat_gap", repeat_gap, 1)
        check_int("seed", seed, None)
        if bad := [c for c in calibration if c[3] not in ("a", "b")]:
            raise ValueError(f"calibration gold must be 'a' or 'b' (the better completion), got {bad[0][3]!r}")
        # a calibration pair must have a clear answer: not an empty completion, not two equal ones
        unclear = [c for c in calibration if not c[1].strip() or not c[2].strip() or c[1] == c[2]]
        calibration = [c for c in calibration if c not in unclear]
        items, seen, dropped = [], set(), 0
        for (prompt, a, b, *gold), role, src in (
                [(c, "calibration", {"calibration": True}) for c in calibration]
                + [(p, "item", s) for p, s in zip(pairs, sources)]):
            key = item_key(prompt, a, b)
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            items.append((key, prompt, (a, b), role, gold[0] if gold else None, src))
        queue: list[tuple] = []
        pending: list[tuple[int, tuple]] = []  # (insert after this many items, item)
        n_items = 0
        for it in items:
            queue.append(it)
            if it[3] == "item":
                n_items += 1
                if repeat_every and n_items % repeat_every == (repeat_every + 1) // 2:
                    pending.append((n_items + repeat_gap, it[:3] + ("repeat",) + it[4:]))
            while pending and pending[0][0] <= n_items:
                queue.append(pending.pop(0)[1])
        queue.extend(p[1] for p in pending)
        entries = [Entry(index=i, key=k, prompt=p, completions=c, role=role, gold=g, source=src,
                         swapped=_coin(seed, k, role))
                   for i, (k, p, c, role, g, src) in enumerate(queue)]
        super().__init__(entries, store, annotator, clock)
        if dropped:
            self.message = (f"{dropped} duplicate pair(s) dropped: each pair is judged once "
                            "(blind repeats are added on purpose).")
        if unclear:
            self.message += (f" {len(unclear)} calibration pair(s) dropped: an empty completion, or two equal "
                             "ones, has no clear answer.").lstrip()

    def _skipped(self, record: dict) -> bool:
        return record["choice"] == "skip"

    def view(self) -> dict:
        """What to show now: prompt and the two sides as HTML (differences marked)."""
        entry = self.current
        if entry is None:
            return {"prompt": "", "left": "", "right": "", "label": ""}
        a, b = entry.completions
        left, right = (b, a) if entry.swapped else (a, b)
        left_html, right_html = (x or EMPTY for x in highlight_diff(left, right))
        label = {"calibration": " (calibration)", "repeat": "", "item": ""}[entry.role]
        return {"prompt": html.escape(entry.prompt), "left": left_html, "right": right_html,
                "label": f"Item {entry.index + 1} of {len(self.entries)}{label}"}

    def choose(self, verdict: str) -> dict | None:
        """The rater's verdict on the pair on screen: "A", "B", "tie", "both_bad", "skip".

        "A"/"B" name the *shown* sides; the record stores the pair's own order.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} not one of {list(VERDICTS)}")
        entry = self._guard()
        if entry is None:
            return None
        choice = {"A": "b" if entry.swapped else "a", "B": "a" if entry.swapped else "b"}.get(verdict, verdict)
        return self._judge(entry, choice=choice)

    _act = choose

    def _record(self, entry: Entry, **fields: Any) -> dict:
        a, b = entry.completions
        choice = fields.pop("choice")
        return pair_record(entry.prompt, a, b, choice, annotator=self.annotator,
                           swapped=entry.swapped, source=entry.source, **fields)

    def describe(self, record: dict | None) -> str:
        if record is None:
            return "nothing"
        choice = record.get("choice")
        if choice in ("a", "b"):
            shown = "A" if (choice == "a") != record.get("swapped", False) else "B"
            return f"{shown} is better"
        return {"tie": "tie", "both_bad": "both bad", "skip": "skipped"}.get(choice, str(choice))

    def calibration_score(self) -> tuple[int, int]:
        """(correct, judged) on the calibration pairs (ties, both-bad and skips not counted)."""
        rs = [r for r in self.done.values() if r.get("calibration") and r["choice"] in ("a", "b")]
        return sum(r["choice"] == r.get("gold") for r in rs), len(rs)

    def self_agreement(self):
        """Agreement of the rater with their own blind repeats (see ``feedback.self_agreement``)."""
        return self_agreement(list(self.done.values()))

    def summary_text(self) -> str:
        correct, judged = self.calibration_score()
        agree = self.self_agreement()
        parts = [self.progress_text()]
        if judged:
            parts.append(f"calibration: {correct}/{judged} right")
        if agree.n:
            parts.append(f"self-agreement on {agree.n} repeat(s): {agree.raw:.0%}")
        return " · ".join(parts)


class ScoreSession(Session):
    """1-5 satisfaction scores of single completions ``(prompt, completion)``."""

    kind = "score"
    keys = {**{str(s): s for s in SCORE_LABELS}, "0": None}

    def __init__(self, items: Sequence[Sequence[str]], store, annotator: str | None = None, *,
                 sources: dict | Sequence[dict] | None = None, clock=time.monotonic):
        items = check_tuples("items", items, 2, "(prompt, completion)")
        sources = _sources(sources, len(items), "item")
        entries, seen = [], set()
        for (prompt, completion), src in zip(items, sources):
            key = item_key(prompt, completion)
            if key not in seen:
                seen.add(key)
                entries.append(Entry(index=len(entries), key=key, prompt=prompt,
                                     completions=(completion,), source=src))
        super().__init__(entries, store, annotator, clock)
        if len(entries) < len(items):
            self.message = f"{len(items) - len(entries)} duplicate item(s) dropped."

    def _skipped(self, record: dict) -> bool:
        return record.get("score") is None

    def view(self) -> dict:
        entry = self.current
        if entry is None:
            return {"prompt": "", "completion": "", "label": ""}
        return {"prompt": html.escape(entry.prompt), "completion": html.escape(entry.completions[0]).strip() or EMPTY,
                "label": f"Item {entry.index + 1} of {len(self.entries)}"}

    def score(self, value: int | None) -> dict | None:
        """The rater's 1-5 score of the completion on screen (None = skip)."""
        if value is not None and (isinstance(value, bool) or value not in SCORE_LABELS):
            raise ValueError(f"score {value!r}: use 1-5, or None to skip")
        entry = self._guard()
        if entry is None:
            return None
        return self._judge(entry, score=value)

    _act = score

    def _record(self, entry: Entry, **fields: Any) -> dict:
        value = fields.pop("score")
        return score_record(entry.prompt, entry.completions[0], value, annotator=self.annotator,
                            source=entry.source, **fields)

    def describe(self, record: dict | None) -> str:
        if record is None:
            return "nothing"
        s = record.get("score")
        return "skipped" if s is None else f"{s} ({SCORE_LABELS[s]})"
