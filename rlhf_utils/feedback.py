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
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

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
    blob = json.dumps([prompt, *completions], ensure_ascii=False).encode("utf-8", "surrogatepass")
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
    _check_source(source)
    if swapped not in (True, False):
        raise TypeError(f"swapped must be True or False (b was shown first), got {swapped!r:.40}")
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
    _check_source(source)
    record = {
        "schema": SCHEMA_VERSION, "kind": "score", "id": uuid.uuid4().hex, "time": _now(),
        "annotator": annotator, "item": item_key(prompt, completion), "prompt": prompt,
        "completion": completion, "score": score, "source": dict(source or {}),
    }
    record.update(extra)
    validate_record(record)
    return record


def _check_source(source: Any) -> None:
    if source is not None and not isinstance(source, dict):
        raise TypeError(f"source must be a dict of the model and sampling settings (or None), "
                        f"got {type(source).__name__} {source!r:.40}")


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
    if schema < 1:
        raise ValueError(f"schema {schema} is not a version of this store (versions start at 1)")
    check_json_values(record)
    for name, ok, what in _OPTIONAL:
        if name in record and not ok(record[name]):
            raise ValueError(f"{kind} record: field {name!r} is {record[name]!r:.40}, not {what}")


_OPTIONAL = (  # fields the sessions write and read back: (name, test, what it must be)
    ("seconds", lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0),
     "a number of seconds >= 0 or null"),
    ("position", lambda v: type(v) is int and v >= 0, "a whole number >= 0"),
    ("repeat", lambda v: type(v) is bool, "true or false"),
    ("calibration", lambda v: type(v) is bool, "true or false"),
    ("gold", lambda v: v in (None, "a", "b"), "'a', 'b' or null"),
    ("score", lambda v: v is None or type(v) is int, "a whole number 1-5 or null"),
)
MAX_DEPTH = 32
"""Deepest nesting of lists and objects a record may have (a source dict is 2 deep)."""


def check_json_values(record: dict) -> None:
    """Refuse what JSON cannot carry faithfully, naming the field: NaN and infinities (JSON has
    none; Python would write a bare ``NaN`` that other readers reject), strings with a lone
    surrogate (not Unicode: they cannot be written as UTF-8), keys that are not strings,
    objects of other types (sets, bytes, numpy scalars: convert with ``float()``/``int()``/
    ``list()``), and nesting deeper than :data:`MAX_DEPTH`. Iterative: no recursion limit."""
    stack: list[tuple[str, Any, int]] = [(repr(k), v, 1) for k, v in record.items()]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, str):
            if any("\ud800" <= ch <= "\udfff" for ch in value):
                raise ValueError(f"field {where} holds a lone surrogate (not valid Unicode text): {value!r:.60}")
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"field {where} is {value}: JSON has no NaN or infinity; store null (None) "
                                 "for a missing value")
        elif value is None or type(value) in (bool, int):
            pass
        elif depth >= MAX_DEPTH and isinstance(value, (dict, list, tuple)):
            raise ValueError(f"field {where} is nested more than {MAX_DEPTH} levels deep")
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"field {where} has a key {k!r} of type {type(k).__name__}: JSON keys are strings")
                stack.append((f"{where}[{k!r}]", v, depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v, depth + 1) for i, v in enumerate(value))
        else:
            raise TypeError(f"field {where} is a {type(value).__name__} ({value!r:.40}), which JSON cannot carry: "
                            "convert it (float(), int(), str() or list())")


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
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"FeedbackStore needs a file path (str or Path), got {type(path).__name__} {path!r:.40}")
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
        if isinstance(records, (str, bytes, dict)) or not hasattr(records, "__iter__"):
            raise TypeError(f"append_many needs a list of records (dicts from pair_record / score_record), "
                            f"got {type(records).__name__}")
        records = list(records)
        for i, record in enumerate(records):
            try:
                validate_record(record)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"record {i} is not written: {exc}") from None
        if not records:
            return records
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
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
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder, not a feedback store: pass the path of its "
                                "JSON-lines file (e.g. data/feedback/ratings.jsonl)")
    records, problems = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
                validate_record(record)
            except Exception as exc:  # any content at all: skipped with a warning, never raised
                torn = "" if raw.endswith(b"\n") else " (truncated last line: a write was cut off)"
                reason = (exc.msg if isinstance(exc, json.JSONDecodeError) else
                          "nested too deeply to read" if isinstance(exc, RecursionError) else str(exc)[:200])
                problems.append(f"{path}:{lineno}: skipped{torn}: {reason}")
                continue
            records.append(record)
    for message in problems[:max_warnings]:
        warnings.warn(message, FeedbackWarning, stacklevel=2)
    if len(problems) > max_warnings:
        warnings.warn(f"{path}: {len(problems) - max_warnings} more bad lines skipped "
                      f"({len(problems)} in all)", FeedbackWarning, stacklevel=2)
    return records


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:30]} is too large for a float")
    return value


def live_judgements(records: Sequence[dict], annotator: str | None = None, kind: str | None = None,
                    include_repeats: bool = True) -> list[dict]:
    """The judgements still in force: corrections applied, the last word wins.

    A judgement is keyed by ``(annotator, item, repeat)``: a later judgement of the same
    key replaces the earlier one (a re-rating); an ``undo`` record retracts the record
    it ``supersedes``. Blind repeats (``repeat=True``) are kept apart from first
    ratings, so self-agreement can be measured. Returned in the order they were made.
    """
    if isinstance(records, (str, bytes, dict)) or not all(isinstance(r, dict) for r in records):
        raise TypeError("live_judgements needs a list of records (dicts, e.g. from load_records), "
                        f"got {type(records).__name__}")
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

    if isinstance(judgements, (str, bytes, dict)) or not all(isinstance(r, dict) for r in judgements):
        raise TypeError(f"to_preference_dataset needs a list of judgements (dicts, from live_judgements), "
                        f"got {type(judgements).__name__}")
    if not isinstance(separator, str):
        raise TypeError(f"separator must be a str (e.g. ' '), got {type(separator).__name__}")
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
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder: write_preferences needs a file path inside it, "
                                "e.g. data/feedback/preferences.jsonl")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{int(time.time() * 1e6)}.tmp")
    try:
        FeedbackStore(tmp).append_many(records)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(str(tmp) + ".lock")):
            if leftover.exists():
                leftover.unlink()
    return path


# --------------------------------------------------------------------------------------
# Who is rating: one name per store, shared by every session on it
# --------------------------------------------------------------------------------------

RATER_SUFFIX = ".rater.json"
"""``<store>.rater.json`` holds the name of the store's current rater, across kernel restarts."""


def check_rater_name(name: Any) -> str:
    """A rater's name, stripped; a clear error for anything that is not a usable one."""
    if not isinstance(name, str):
        raise TypeError(f"the rater's name must be a str, got {type(name).__name__} {name!r:.40}")
    if not name.strip() or len(name.strip()) > 100 or any("\ud800" <= c <= "\udfff" or c < " " for c in name.strip()):
        raise ValueError(f"rater name {name!r:.60} is empty, longer than 100 characters or not printable text: "
                         "type your name (or a nickname) instead")
    return name.strip()


class Rater:
    """The rater of one store: one name per store and kernel, shared by every rating session on
    it (the pairwise and the score widget alike), and remembered in ``<store>.rater.json``, so a
    new kernel resumes as the same person without retyping. :func:`rater_of` hands out one per
    store; sessions listen for a change of name made in another widget."""

    def __init__(self, store_path: str | os.PathLike):
        self.file = Path(str(store_path) + RATER_SUFFIX)
        self.name: str | None = None
        self._listeners: list[weakref.WeakMethod] = []

    def resolve(self, store: "FeedbackStore", items: set[str]) -> str:
        """The name: set in this kernel, else the remembered one, else (a store from before
        ``<store>.rater.json``) whoever judged most of ``items`` (keys), else READER."""
        if self.name is None and (name := self.remembered()) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reported when a session starts
                names = [r["annotator"] for r in live_judgements(store.records()) if r["item"] in items]
            name = max(set(names), key=names.count) if names else READER
        self.name = self.name or name
        return self.name

    def remembered(self) -> str | None:
        """The name in ``<store>.rater.json`` (None if missing or unreadable: never raises)."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            return check_rater_name(data["annotator"])
        except Exception:
            return None

    def set(self, name: str) -> str:
        """Make ``name`` the store's rater (remembered on disk); tell every listening session."""
        name = check_rater_name(name)
        changed, self.name = name != self.name, name
        if self.remembered() != name:
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps({"annotator": name, "time": _now()}, ensure_ascii=False) + "\n",
                               encoding="utf-8")
                os.replace(tmp, self.file)
            except OSError as exc:  # the store itself is writable; the name is still kept in this kernel
                warnings.warn(f"could not remember the rater's name in {self.file}: {exc}", FeedbackWarning)
        if changed:
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            for ref in list(self._listeners):
                if (callback := ref()) is not None:
                    callback()
        return name

    def listen(self, method: Callable[[], None]) -> None:
        """Call the bound ``method`` when the name changes (held weakly: no leak)."""
        self._listeners.append(weakref.WeakMethod(method))


_RATERS: dict[str, Rater] = {}


def rater_of(store: "FeedbackStore | str | os.PathLike") -> Rater:
    """The one :class:`Rater` of ``store`` in this kernel."""
    path = store.path if isinstance(store, FeedbackStore) else Path(store)
    return _RATERS.setdefault(os.path.realpath(path), Rater(path))
