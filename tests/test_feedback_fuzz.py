"""Property tests of the preference store (hypothesis): the loader never raises on any line
content, and the writer writes only what reads back the same.

``load_records`` promises to skip a bad line with a warning and never raise: fuzzed here with
random bytes, mutated JSON, deep nesting, huge numbers, NaN/Infinity tokens and lone
surrogates, each line between two good records that must survive it. The writer refuses
non-finite numbers, lone surrogates and values JSON cannot carry (naming the field) and then
leaves the file as it was; what it accepts loads back equal. Derandomised: the same examples
on every run.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rlhf_utils import feedback as fb

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

GOOD = [fb.pair_record("i saw this film .", "it was great .", "it was bad .", "a"),
        fb.score_record("i read this book .", "it was fine .", 4)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def _record_like(draw_value) -> dict:
    """A real record with one field replaced or added: the likeliest way a line goes wrong."""
    return dict(GOOD[0], **draw_value)


crafted = st.sampled_from([
    b"[" * 1_500, b"{" * 100_000, b'{"a":' * 5_000, b"[" * 900 + b"]" * 900,
    b'{"schema": 1' + b"0" * 5_000 + b"}", b'{"schema": 1e999}', b"1e99999", b"-Infinity", b"NaN",
    json.dumps(GOOD[0]).replace('"i saw', '"\\ud800 saw').encode(),
    json.dumps(GOOD[0]).replace('"a"}', '"a", "seconds": NaN}').encode(),
    json.dumps(GOOD[0]).replace('"a"}', '"a", "seconds": 1e999}').encode(),
    json.dumps(dict(GOOD[0], schema=0)).encode(), json.dumps(dict(GOOD[0], schema=True)).encode(),
    json.dumps(dict(GOOD[0], seconds="3")).encode(), json.dumps(dict(GOOD[0], score=3.5)).encode(),
    b"\xff\xfe\x00garbage", b"\x00" * 64, "\u2028{}".encode(), b"{}", b"[]", b"null", b'""',
])

lines = st.one_of(
    crafted,
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["schema", "kind", "id", "item", "prompt", "choice", "seconds", "repeat",
                                     "supersedes", "annotator", "score", "position", "gold", "source"]),
                    json_values, max_size=4).map(lambda d: json.dumps(_record_like(d)).encode()),
    st.binary(max_size=300).map(lambda b: json.dumps(GOOD[0]).encode()[: len(b) % 200]),  # a torn line
)


@SETTINGS
@given(line=lines)
@example(line=b"[" * 1_500)
def test_loader_never_raises_on_any_line_and_keeps_the_good_ones(line):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.jsonl"
        body = json.dumps(GOOD[0]).encode() + b"\n" + line.replace(b"\n", b" ") + b"\n" + json.dumps(GOOD[1]).encode()
        path.write_bytes(body + b"\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fb.FeedbackWarning)
            records = fb.load_records(path)
        ids = [r["id"] for r in records]
        assert ids[0] == GOOD[0]["id"] and ids[-1] == GOOD[1]["id"] and len(ids) <= 3
        for r in records:  # whatever loads can be written again, byte-safe, and means the same
            fb.validate_record(r)
            text = json.dumps(r, ensure_ascii=False, allow_nan=False)
            assert json.loads(text.encode("utf-8").decode("utf-8")) == r
        fb.write_preferences(Path(tmp) / "out.jsonl", records)  # the crash the issue found: never now


@SETTINGS
@given(extra=st.dictionaries(st.sampled_from(["seconds", "note", "source", "tags"]),
                             json_values | st.sets(st.integers(), max_size=2) | st.binary(max_size=4),
                             max_size=3),
       prompt=st.text(max_size=20))
def test_writer_refuses_what_json_cannot_carry_and_keeps_the_file(extra, prompt):
    with tempfile.TemporaryDirectory() as tmp:
        store = fb.FeedbackStore(Path(tmp) / "store.jsonl")
        store.append(GOOD[0])
        before = store.path.read_bytes()
        try:
            record = fb.pair_record(prompt, "a .", "b .", "tie", **extra)
            store.append(record)
        except (ValueError, TypeError) as exc:
            assert any(word in str(exc) for word in ("field", "record", "source must be"))  # names what
            assert store.path.read_bytes() == before  # nothing written
            return
        assert b"NaN" not in store.path.read_bytes() and b"Infinity" not in store.path.read_bytes()
        assert fb.load_records(store.path)[-1] == json.loads(json.dumps(record))


def test_many_bad_lines_warn_in_a_bounded_number_of_warnings(tmp_path):
    path = tmp_path / "store.jsonl"
    path.write_bytes(b"".join(os.urandom(50).replace(b"\n", b" ") + b"\n" for _ in range(200)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fb.load_records(path) == []
    assert len(caught) == 21 and "180 more bad lines skipped (200 in all)" in str(caught[-1].message)
