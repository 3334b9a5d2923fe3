"""Human feedback: the preference store, a simulated annotator, agreement between raters.

Three parts, each readable on its own:

1. **The store** (:class:`FeedbackStore`): an append-only JSON-lines file, one record per
   judgement. A judgement is a pairwise verdict on two completions of one prompt
   (``a`` / ``b`` / ``tie`` / ``both_bad`` / ``skip``) or a 1-5 satisfaction score of one
   completion (the form of feedback the source article names). The file is never
   rewritten: an undo or a re-rating is a new *correction* record, and on load the last
   word wins. Each record is one line written with one ``os.write`` on an ``O_APPEND``
   descriptor, under a file lock (``filelock``), then ``fsync``'d -- so a killed kernel,
   a crash or a full disk never damages lines already written, and two kernels writing
   at once never interleave a line.
2. **The simulated annotator** (:class:`SimulatedAnnotator`): labels a pair from the
   world's gold preference through a Bradley-Terry noise model (Bradley & Terry 1952;
   the same model the reward model is trained under, Christiano et al. 2017, Ouyang et
   al. 2022):

   .. math:: P(a \\succ b) = \\sigma\\big((g_a - g_b)/T + \\beta_{pos}\\,s + \\lambda\\,(\\ell_a - \\ell_b)\\big)

   with gold scores :math:`g`, temperature :math:`T`, an optional position bias
   :math:`\\beta_{pos}` (``s = +1`` when ``a`` is shown first, ``-1`` otherwise) and an
   optional preference for length :math:`\\lambda` per word.
3. **Agreement** between any two raters (raw agreement and Cohen's kappa, Cohen 1960),
   and the best accuracy the annotator's noise allows (:func:`best_accuracy`).

The export (:func:`to_preference_dataset`) gives a ``datasets.Dataset`` in TRL's standard
preference format (``prompt``, ``chosen``, ``rejected``), which TRL's ``RewardTrainer``
and ``DPOTrainer`` take unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from filelock import FileLock

SCHEMA_VERSION = 1
"""Version of the record layout. A reader meeting a newer one skips it and says so."""

CHOICES = ("a", "b", "tie", "both_bad", "skip")
"""Pairwise verdicts, in the pair's own (canonical) order: ``a`` is ``completion_a``."""

SCORES = (1, 2, 3, 4, 5)
"""The satisfaction scale of a score judgement (``None`` = skipped)."""

KINDS = ("pair", "score", "undo")
"""Record kinds. ``undo`` retracts the record named in ``supersedes``."""

READER = "you"
"""Annotator name of the person in front of the widget, unless they give another."""


class FeedbackWarning(UserWarning):
    """A line of a store was skipped (corrupt, foreign, or from a newer schema)."""


class FeedbackStoreError(OSError):
    """The store cannot be written (folder not writable, disk full, ...)."""

    def __str__(self) -> str:
        return str(self.strerror)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def item_key(prompt: str, *completions: str) -> str:
    """A stable id of one item to judge: SHA-256 of the prompt and completions (16 hex).

    The same pair gets the same key in every kernel, so a widget can resume after a
    restart and skip what was already rated.
    """
    blob = json.dumps([prompt, *completions], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def pair_record(prompt: str, completion_a: str, completion_b: str, choice: str, *,
                annotator: str = READER, swapped: bool = False, source: dict | None = None,
                **extra: Any) -> dict:
    """A pairwise judgement record (not yet written).

    ``choice`` is in the pair's own order (``a`` = ``completion_a``); ``swapped`` says
    ``completion_b`` was *shown* first (on the left), so position bias can be measured:
    the rater chose the first-shown completion when ``(choice == "a") != swapped``.
    ``source`` holds the model and sampling settings that produced the completions.
    Extra keys (``seconds``, ``repeat``, ``calibration``, ``gold``, ``supersedes`` ...)
    are kept as given.
    """
    record = {
        "schema": SCHEMA_VERSION, "kind": "pair", "id": uuid.uuid4().hex, "time": _now(),
        "annotator": annotator, "item": item_key(prompt, completion_a, completion_b),
        "prompt": prompt, "completion_a": completion_a, "completion_b": completion_b,
        "choice": choice, "swapped": bool(swapped), "source": dict(source or {}),
    }
    record.update(extra)
    validate_record(record)
    return record


def score_record(prompt: str, completion: str, score: int | None, *, annotator: str = READER,
                 source: dict | None = None, **extra: Any) -> dict:
    """A 1-5 satisfaction-score record of one completion (``score=None``: skipped)."""
    record = {
        "schema": SCHEMA_VERSION, "kind": "score", "id": uuid.uuid4().hex, "time": _now(),
        "annotator": annotator, "item": item_key(prompt, completion), "prompt": prompt,
        "completion": completion, "score": score, "source": dict(source or {}),
    }
    record.update(extra)
    validate_record(record)
    return record


def undo_record(target: dict, *, annotator: str | None = None) -> dict:
    """A correction that retracts ``target`` (an earlier record) without replacing it."""
    record = {
        "schema": SCHEMA_VERSION, "kind": "undo", "id": uuid.uuid4().hex, "time": _now(),
        "annotator": annotator or target["annotator"], "item": target["item"],
        "supersedes": target["id"], "repeat": bool(target.get("repeat", False)),
    }
    validate_record(record)
    return record


_REQUIRED = {
    "pair": {"prompt": str, "completion_a": str, "completion_b": str, "choice": str, "swapped": bool},
    "score": {"prompt": str, "completion": str},
    "undo": {"supersedes": str},
}


def validate_record(record: Any) -> None:
    """Raise ``ValueError`` saying what is wrong if ``record`` is not a valid record."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    schema = record.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise ValueError("no integer 'schema' field (not a feedback record)")
    if schema > SCHEMA_VERSION:
        raise ValueError(f"record from schema version {schema}, newer than this rlhf_utils "
                         f"(schema {SCHEMA_VERSION}): upgrade rlhf_utils to read it")
    kind = record.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {KINDS})")
    for name in ("id", "time", "annotator", "item"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise ValueError(f"missing or empty string field {name!r}")
    for name, typ in _REQUIRED[kind].items():
        if not isinstance(record.get(name), typ):
            raise ValueError(f"{kind} record: field {name!r} missing or not {typ.__name__}")
    if kind == "pair" and record["choice"] not in CHOICES:
        raise ValueError(f"pair record: choice {record['choice']!r} not one of {CHOICES}")
    if kind == "score" and record.get("score") not in (*SCORES, None):
        raise ValueError(f"score record: score {record.get('score')!r} not in 1..5 or null")
    if "supersedes" in record and not isinstance(record["supersedes"], str):
        raise ValueError("'supersedes' must be the id (a string) of an earlier record")


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class FeedbackStore:
    """An append-only JSON-lines preference store.

    >>> store = FeedbackStore("data/feedback/ratings.jsonl")        # doctest: +SKIP
    >>> store.append(pair_record("i hated it .", "it was bad .", "it was great .", "b"))  # doctest: +SKIP
    >>> store.judgements()                                          # doctest: +SKIP

    Durability: each record is one line, written with a single ``os.write`` on an
    ``O_APPEND`` file descriptor while holding ``<path>.lock`` (``filelock``), then
    ``fsync``'d before :meth:`append` returns. If a write fails part-way (``ENOSPC``
    "no space left on device", a file-size limit), the file is truncated back to where
    the line began and :class:`FeedbackStoreError` says what happened: no half line is
    left behind. A torn last line from an earlier crash is fenced off by starting the
    next record on a fresh line; loading skips it with a warning.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock", timeout=60)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.close(fd)
            with self.lock:
                pass
        except OSError as exc:
            raise FeedbackStoreError(
                exc.errno, f"cannot write the feedback store at {self.path}: {exc.strerror or exc}. "
                "Pass a path in a folder you can write, or set RLHF_FEEDBACK to one."
            ) from exc

    def __repr__(self) -> str:
        return f"FeedbackStore({str(self.path)!r})"

    # ---- writing ---------------------------------------------------------------------

    def append(self, record: dict) -> dict:
        """Validate ``record``, write it as one line, fsync; return it."""
        self.append_many([record])
        return record

    def append_many(self, records: Iterable[dict]) -> list[dict]:
        """Write several records with one write and one fsync (whole lines, or none)."""
        records = list(records)
        for record in records:
            validate_record(record)
        if not records:
            return records
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                       for r in records).encode("utf-8")
        with self.lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.fstat(fd).st_size
                if start > 0 and os.pread(fd, 1, start - 1) != b"\n":
                    data = b"\n" + data  # fence off a torn line left by a crash
                try:
                    written = os.write(fd, data)
                    if written != len(data):  # the OS wrote what fitted: disk full or a size limit
                        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
                    os.fsync(fd)
                except OSError as exc:
                    try:
                        os.ftruncate(fd, start)
                        os.fsync(fd)
                    except OSError:
                        pass
                    what = ("the disk is full (no space left on device)" if exc.errno == errno.ENOSPC
                            else exc.strerror or str(exc))
                    if exc.strerror and exc.strerror.startswith("short write"):
                        what = f"{exc.strerror}: the disk is full or a file-size limit was reached"
                    raise FeedbackStoreError(
                        exc.errno, f"could not save {len(records)} judgement(s) to {self.path}: {what}. "
                        "Nothing was half-written: earlier judgements are intact. Free space "
                        "(or choose another path) and rate again."
                    ) from exc
            finally:
                os.close(fd)
        return records

    # ---- reading ---------------------------------------------------------------------

    def records(self) -> list[dict]:
        """Every valid record in file order (see :func:`load_records`)."""
        return load_records(self.path)

    def judgements(self, annotator: str | None = None, kind: str | None = None,
                   include_repeats: bool = True) -> list[dict]:
        """The live judgements after corrections (see :func:`live_judgements`)."""
        return live_judgements(self.records(), annotator=annotator, kind=kind,
                               include_repeats=include_repeats)

    def to_dataset(self, **kwargs: Any):
        """The store's pairwise judgements as a TRL preference data set."""
        return to_preference_dataset(self.judgements(), **kwargs)


def load_records(path: str | os.PathLike, max_warnings: int = 20) -> list[dict]:
    """Read every valid record of a store, in file order.

    A line that is not JSON, not a feedback record, or from a newer schema version is
    skipped with a :class:`FeedbackWarning` naming the file and line number (a record
    from a newer schema says "upgrade rlhf_utils"). Never raises on bad content, never
    drops a line silently. A missing file is an empty store.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, problems = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                validate_record(record)
            except (ValueError, UnicodeDecodeError) as exc:
                torn = "" if raw.endswith(b"\n") else " (truncated last line: a write was cut off)"
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                problems.append(f"{path}:{lineno}: skipped{torn}: {reason}")
                continue
            records.append(record)
    for message in problems[:max_warnings]:
        warnings.warn(message, FeedbackWarning, stacklevel=2)
    if len(problems) > max_warnings:
        warnings.warn(f"{path}: {len(problems) - max_warnings} more bad lines skipped "
                      f"({len(problems)} in all)", FeedbackWarning, stacklevel=2)
    return records


def live_judgements(records: Sequence[dict], annotator: str | None = None, kind: str | None = None,
                    include_repeats: bool = True) -> list[dict]:
    """The judgements still in force: corrections applied, the last word wins.

    A judgement is keyed by ``(annotator, item, repeat)``: a later judgement of the same
    key replaces the earlier one (a re-rating); an ``undo`` record retracts the record
    it ``supersedes``. Blind repeats (``repeat=True``) are kept apart from first
    ratings, so self-agreement can be measured. Returned in the order they were made.
    """
    live: dict[tuple, dict] = {}
    for record in records:
        key = (record["annotator"], record["item"], bool(record.get("repeat", False)))
        if record["kind"] == "undo":
            if key in live and live[key]["id"] == record["supersedes"]:
                del live[key]
            continue
        live.pop(key, None)
        live[key] = record  # re-inserted: dict order = order of the latest word
    out = list(live.values())
    if annotator is not None:
        out = [r for r in out if r["annotator"] == annotator]
    if kind is not None:
        out = [r for r in out if r["kind"] == kind]
    if not include_repeats:
        out = [r for r in out if not r.get("repeat", False)]
    return out


def to_preference_dataset(judgements: Sequence[dict], separator: str = " ",
                          include_calibration: bool = False, include_repeats: bool = False):
    """Pairwise judgements -> ``datasets.Dataset`` in TRL's standard preference format.

    Columns ``prompt``, ``chosen``, ``rejected`` (plain text; each completion starts with
    ``separator`` because TRL joins ``prompt + chosen``), plus ``annotator`` and ``item``.
    This trains TRL's ``RewardTrainer`` or ``DPOTrainer`` unchanged.

    **Excluded:** verdicts ``tie``, ``both_bad`` and ``skip`` (they name no winner; a
    Bradley-Terry loss has no term for them), score records, and -- unless asked for --
    calibration pairs and blind repeats (a repeat would count one pair twice). Pass
    live judgements (:func:`live_judgements`), not raw records.
    """
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": [], "annotator": [], "item": []}
    for r in judgements:
        if r.get("kind") != "pair" or r["choice"] not in ("a", "b"):
            continue
        if (r.get("calibration") and not include_calibration) or (r.get("repeat") and not include_repeats):
            continue
        win, lose = (r["completion_a"], r["completion_b"]) if r["choice"] == "a" else \
                    (r["completion_b"], r["completion_a"])
        rows["prompt"].append(r["prompt"])
        rows["chosen"].append(separator + win)
        rows["rejected"].append(separator + lose)
        rows["annotator"].append(r["annotator"])
        rows["item"].append(r["item"])
    return Dataset.from_dict(rows)


# --------------------------------------------------------------------------------------
# The simulated annotator
# --------------------------------------------------------------------------------------


def sigmoid(x):
    """Logistic function, numerically stable for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def n_words(text: str) -> int:
    """Length of a completion in words (the world's tokens are space-separated)."""
    return len(text.split())


@dataclass(frozen=True)
class SimulatedAnnotator:
    """A rater who prefers what the gold preference prefers, noisily (Bradley-Terry).

    ``P(a ≻ b) = σ((g_a − g_b)/T + position_bias·s + length_bias·(len_a − len_b))``
    with ``s = +1`` when ``a`` is shown first and ``-1`` otherwise; lengths in words.
    ``T → 0`` is a perfect rater of the gold preference; large ``T`` is a coin flip.
    The biases model the systematic errors of real raters (notebook 07): a taste for
    whichever is shown first, a taste for longer answers.
    """

    gold: Callable[..., np.ndarray]
    """vectorised gold score ``gold(completions, prompts=None) -> array`` (``World.gold_rewards``)"""
    temperature: float = 0.15
    """Bradley-Terry temperature T (in units of the gold score)"""
    position_bias: float = 0.0
    """logit added in favour of the completion shown first"""
    length_bias: float = 0.0
    """logit added per word that ``a`` is longer than ``b``"""
    name: str = "simulated"
    """annotator name written on its records"""

    @classmethod
    def from_world(cls, world: Any, **kwargs: Any) -> "SimulatedAnnotator":
        """An annotator whose gold preference is ``world.gold_rewards``."""
        return cls(gold=lambda texts, prompts=None: np.asarray(world.gold_rewards(list(texts), prompts), float),
                   **kwargs)

    def logits(self, completions_a: Sequence[str], completions_b: Sequence[str],
               a_first: Sequence[bool] | bool = True, prompts: Sequence[str] | None = None) -> np.ndarray:
        """Log-odds that ``a`` is preferred, per pair.  # [n_pairs]"""
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use a small value for a near-perfect rater)")
        prompts = None if prompts is None else list(prompts)
        g_a = np.asarray(self.gold(list(completions_a), prompts), dtype=np.float64)  # [n]
        g_b = np.asarray(self.gold(list(completions_b), prompts), dtype=np.float64)  # [n]
        s = np.where(np.broadcast_to(np.asarray(a_first, dtype=bool), g_a.shape), 1.0, -1.0)
        d_len = np.array([n_words(a) - n_words(b) for a, b in zip(completions_a, completions_b)], float)
        return (g_a - g_b) / self.temperature + self.position_bias * s + self.length_bias * d_len

    def prob_a(self, completions_a, completions_b, a_first=True, prompts=None) -> np.ndarray:
        """P(a ≻ b) per pair.  # [n_pairs]"""
        return sigmoid(self.logits(completions_a, completions_b, a_first, prompts))

    def label(self, completions_a, completions_b, a_first=True,
              rng: np.random.Generator | int | None = 0, prompts=None) -> list[str]:
        """Sample a verdict ``"a"`` or ``"b"`` per pair."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        p = self.prob_a(completions_a, completions_b, a_first, prompts)
        return ["a" if u < q else "b" for u, q in zip(rng.random(len(p)), p)]

    def records(self, pairs: Sequence[tuple[str, str, str]], rng: np.random.Generator | int | None = 0,
                source: dict | None = None, randomise_order: bool = True) -> list[dict]:
        """Label ``(prompt, a, b)`` pairs and return store records (shown order random)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        swapped = rng.random(len(pairs)) < 0.5 if randomise_order else np.zeros(len(pairs), bool)
        choices = self.label([p[1] for p in pairs], [p[2] for p in pairs], ~swapped, rng,
                             prompts=[p[0] for p in pairs])
        note = {"temperature": self.temperature, "position_bias": self.position_bias,
                "length_bias": self.length_bias}
        return [pair_record(p, a, b, c, annotator=self.name, swapped=bool(s),
                            source=source, annotator_model=note)
                for (p, a, b), c, s in zip(pairs, choices, swapped)]


def best_accuracy(gold_gaps: Sequence[float] | np.ndarray, temperature: float) -> float:
    """The best agreement with the gold preference that labels of this noise allow.

    The expected fraction of pairs on which a Bradley-Terry annotator of temperature
    ``T`` agrees with the gold preference: ``mean σ(|Δg| / T)`` over the pairs' gold
    gaps ``Δg = g_a − g_b``. A reward model trained on such labels cannot be expected
    to agree with the *labels* more often than this on held-out pairs (notebook 05).
    """
    gaps = np.abs(np.asarray(gold_gaps, dtype=np.float64))
    if gaps.size == 0:
        return float("nan")
    return float(np.mean(sigmoid(gaps / temperature)))


# --------------------------------------------------------------------------------------
# Agreement between raters
# --------------------------------------------------------------------------------------


def cohen_kappa(labels_1: Sequence[str], labels_2: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (Cohen 1960).

    ``κ = (p_o − p_e) / (1 − p_e)``: ``p_o`` the observed agreement, ``p_e`` the
    agreement expected by chance from each rater's own label frequencies,
    ``p_e = Σ_k p_1(k) p_2(k)``. 1 = perfect, 0 = chance level. When chance agreement
    is already 1 (both raters always give the same single label) kappa is undefined:
    NaN, as in scikit-learn.
    """
    if len(labels_1) != len(labels_2):
        raise ValueError(f"{len(labels_1)} vs {len(labels_2)} labels: rate the same items")
    n = len(labels_1)
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in zip(labels_1, labels_2)) / n
    c1, c2 = Counter(labels_1), Counter(labels_2)
    p_e = sum(c1[k] * c2[k] for k in c1) / n**2
    if p_e == 1.0:
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)


@dataclass(frozen=True)
class Agreement:
    """How often two raters agree on the items both judged."""

    n: int
    """items judged by both (skips left out)"""
    raw: float
    """fraction with the same verdict"""
    kappa: float
    """Cohen's kappa (agreement corrected for chance)"""


def agreement(labels_1: Sequence[str], labels_2: Sequence[str]) -> Agreement:
    """Raw agreement and Cohen's kappa of two equal-length label lists."""
    n = len(labels_1)
    raw = float("nan") if n == 0 else sum(x == y for x, y in zip(labels_1, labels_2)) / n
    return Agreement(n=n, raw=raw, kappa=cohen_kappa(labels_1, labels_2))


def gold_choice(gold_a: float, gold_b: float) -> str:
    """The gold preference's verdict on a pair: ``a``, ``b`` or ``tie``."""
    return "a" if gold_a > gold_b else "b" if gold_b > gold_a else "tie"


def annotator_agreement(judgements_1: Sequence[dict], judgements_2: Sequence[dict]) -> Agreement:
    """Agreement of two raters' live pairwise judgements, matched by item.

    Items either rater skipped are left out; ``tie`` and ``both_bad`` count as verdicts.
    Pass e.g. ``store.judgements(annotator="you")`` and the simulated annotator's.
    """
    first = {r["item"]: r["choice"] for r in judgements_1 if r["kind"] == "pair" and r["choice"] != "skip"}
    second = {r["item"]: r["choice"] for r in judgements_2 if r["kind"] == "pair" and r["choice"] != "skip"}
    common = [k for k in first if k in second]
    return agreement([first[k] for k in common], [second[k] for k in common])


def self_agreement(judgements: Sequence[dict]) -> Agreement:
    """Agreement of a rater with themself: first ratings vs their blind repeats."""
    return annotator_agreement([r for r in judgements if not r.get("repeat")],
                               [r for r in judgements if r.get("repeat")])


def position_bias_rate(judgements: Sequence[dict]) -> float:
    """Share of decisive verdicts (a/b) that went to the completion shown first."""
    decisive = [r for r in judgements if r.get("kind") == "pair" and r["choice"] in ("a", "b")]
    if not decisive:
        return float("nan")
    return sum((r["choice"] == "a") != r["swapped"] for r in decisive) / len(decisive)


def judgements_per_minute(judgements: Sequence[dict]) -> float:
    """Pace of a rater: 60 / mean seconds spent per judgement (``seconds`` field)."""
    secs = [r["seconds"] for r in judgements if isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0]
    return float("nan") if not secs else 60.0 / float(np.mean(secs))


def write_preferences(path: str | os.PathLike, records: Sequence[dict]) -> Path:
    """Write a *fresh* store holding ``records`` (atomically: temp file, then rename).

    For derived files such as ``preferences.jsonl`` that a notebook rebuilds on each run
    (the reader's own ratings stay in their append-only store).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{int(time.time() * 1e6)}.tmp")
    try:
        FeedbackStore(tmp).append_many(records)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(str(tmp) + ".lock")):
            if leftover.exists():
                leftover.unlink()
    return path
