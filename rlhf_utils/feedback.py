"""Human feedback: the preference store, where every judgement a rater makes is kept.

1. **The store** (:class:`FeedbackStore`): an append-only JSON-lines file, one record per
   judgement. A judgement is a pairwise verdict on two completions of one prompt
   (``a`` / ``b`` / ``tie`` / ``both_bad`` / ``skip``) or a 1-5 satisfaction score of one
   completion (the form of feedback the source article names). The file is never
   rewritten: an undo or a re-rating is a new *correction* record, and on load the last
   word wins. Each record is one line written with one ``os.write`` on an ``O_APPEND``
   descriptor, under a file lock (``filelock``), then ``fsync``'d -- so a killed kernel,
   a crash or a full disk never damages lines already written, and two kernels writing
   at once never interleave a line.
The simulated annotator and the agreement between raters are :mod:`rlhf_utils.annotators`.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

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
