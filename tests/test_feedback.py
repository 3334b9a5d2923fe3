"""The preference store (rlhf_utils.feedback), the simulated annotator and agreement (rlhf_utils.annotators)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rlhf_utils import annotators as an
from rlhf_utils import feedback as fb
from rlhf_utils.annotators import SimulatedAnnotator, agreement, best_accuracy, cohen_kappa
from rlhf_utils.feedback import (SCHEMA_VERSION, FeedbackStore, FeedbackStoreError, FeedbackWarning, item_key,
                                 live_judgements, load_records, pair_record, score_record,
                                 to_preference_dataset, undo_record)

REPO = Path(__file__).resolve().parents[1]


def _pair(i: int, choice: str = "a", **kw) -> dict:
    return pair_record(f"prompt {i} .", f"good {i} .", f"bad {i} .", choice, **kw)


# ---- records and the store ----------------------------------------------------------


def test_item_key_is_stable_and_order_sensitive():
    k = item_key("p .", "a .", "b .")
    assert k == item_key("p .", "a .", "b .") and len(k) == 16
    assert k != item_key("p .", "b .", "a .")
    # independent reference: sha256 of the JSON list
    import hashlib
    assert k == hashlib.sha256(json.dumps(["p .", "a .", "b ."]).encode()).hexdigest()[:16]


def test_record_fields():
    r = _pair(1, "b", swapped=True, source={"model": "sft", "temperature": 1.0}, seconds=2.5)
    for name in ("id", "time", "annotator", "prompt", "completion_a", "completion_b", "choice",
                 "swapped", "source", "schema"):
        assert name in r
    assert r["schema"] == SCHEMA_VERSION and r["annotator"] == "you" and r["seconds"] == 2.5
    s = score_record("p .", "c .", 4, annotator="ann")
    assert s["kind"] == "score" and s["score"] == 4
    with pytest.raises(ValueError, match="choice"):
        _pair(1, "maybe")
    with pytest.raises(ValueError, match="score"):
        score_record("p .", "c .", 7)


def test_append_and_load_round_trip(tmp_path):
    store = FeedbackStore(tmp_path / "s.jsonl")
    written = [store.append(_pair(i, c)) for i, c in enumerate(["a", "b", "tie", "both_bad", "skip"])]
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 5 and [json.loads(x) for x in lines] == written
    assert store.records() == written


def test_last_word_wins_and_undo(tmp_path):
    store = FeedbackStore(tmp_path / "s.jsonl")
    r1 = store.append(_pair(1, "a"))
    r2 = store.append(_pair(2, "a"))
    r1b = store.append(_pair(1, "b", supersedes=r1["id"]))      # re-rating
    store.append(undo_record(r2))                                # undo
    rep = store.append(_pair(1, "a", repeat=True))              # blind repeat: kept apart
    other = store.append(_pair(1, "tie", annotator="sim"))      # another rater
    live = store.judgements()
    assert [r["id"] for r in live] == [r1b["id"], rep["id"], other["id"]]
    assert [r["id"] for r in store.judgements(annotator="you", include_repeats=False)] == [r1b["id"]]
    # the file was only appended to
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 6


def test_undo_of_a_superseded_record_changes_nothing(tmp_path):
    r1 = _pair(1, "a")
    r1b = _pair(1, "b")
    live = live_judgements([r1, r1b, undo_record(r1)])
    assert [r["id"] for r in live] == [r1b["id"]]


def test_corrupt_lines_are_skipped_with_line_numbers(tmp_path):
    path = tmp_path / "s.jsonl"
    store = FeedbackStore(path)
    good = [store.append(_pair(i)) for i in range(3)]
    with open(path, "a") as f:
        f.write("this is not json\n")
        f.write(json.dumps({"hello": "world"}) + "\n")           # foreign JSON
        f.write(json.dumps(_pair(9))[:40])                         # truncated last line
    with pytest.warns(FeedbackWarning) as caught:
        records = load_records(path)
    assert records == good
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:4:" in m for m in messages)
    assert any(f"{path}:5:" in m for m in messages)
    assert any(f"{path}:6:" in m and "truncated" in m for m in messages)
    # the next append starts a fresh line: the torn line stays isolated, the new one is whole
    new = store.append(_pair(10))
    with pytest.warns(FeedbackWarning):
        assert load_records(path) == good + [new]


def test_newer_schema_is_skipped_with_upgrade_message(tmp_path):
    path = tmp_path / "s.jsonl"
    store = FeedbackStore(path)
    ok = store.append(_pair(1))
    future = dict(_pair(2), schema=SCHEMA_VERSION + 1)
    with open(path, "a") as f:
        f.write(json.dumps(future) + "\n")
    with pytest.warns(FeedbackWarning, match=rf"{path}:2:.*schema version {SCHEMA_VERSION + 1}.*upgrade rlhf_utils"):
        assert load_records(path) == [ok]
    with pytest.raises(ValueError, match="upgrade rlhf_utils"):
        store.append(future)


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(FeedbackStoreError, match="cannot write the feedback store .*RLHF_FEEDBACK"):
        FeedbackStore(blocker / "sub" / "s.jsonl")


def test_disk_full_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    store = FeedbackStore(path)
    good = [store.append(_pair(i)) for i in range(3)]
    size = path.stat().st_size
    real_write = os.write

    def half_then_enospc(fd, data):  # the kernel writes what fits, then reports ENOSPC
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fb.os, "write", half_then_enospc)
    with pytest.raises(FeedbackStoreError, match="disk is full.*earlier judgements are intact"):
        store.append(_pair(99))
    monkeypatch.setattr(fb.os, "write", real_write)
    assert path.stat().st_size == size                 # truncated back
    assert load_records(path) == good                   # no warning: no partial line


def test_real_short_write_is_truncated_back(tmp_path):
    """A real partial write: RLIMIT_FSIZE stops the file mid-line (EFBIG), in a child process."""
    path = tmp_path / "s.jsonl"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from rlhf_utils.feedback import FeedbackStore, FeedbackStoreError, pair_record
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = FeedbackStore({str(path)!r})
        for i in range(3):
            store.append(pair_record("p .", f"a {{i}} .", "b .", "a"))
        size = __import__("os").path.getsize({str(path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, size + 50))
        try:
            store.append(pair_record("p .", "a long completion " * 20, "b .", "a"))
        except FeedbackStoreError as exc:
            print("ERROR", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert "ERROR could not save 1 judgement(s)" in out.stdout, out.stderr
    assert len(load_records(path)) == 3
    assert path.read_bytes().endswith(b"\n")


WRITER = textwrap.dedent("""
    import sys
    from rlhf_utils.feedback import FeedbackStore, pair_record
    store = FeedbackStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        r = store.append(pair_record(f"prompt {i} from {sys.argv[3]} .", "x " * (i % 50) + ".", "y .", "a",
                                     annotator=sys.argv[3]))
        print(r["id"], flush=True)   # printed only after the record is durable
""")


def _writer(path, n, name):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n), name], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_sigkill_mid_stream_keeps_every_completed_judgement(tmp_path):
    path = tmp_path / "s.jsonl"
    proc = _writer(path, 100_000, "w")
    acknowledged = []
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    acknowledged += [x for x in rest.split("\n") if len(x) == 32]
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = {r["id"] for r in load_records(path)}
    assert set(acknowledged) <= ids and len(ids) >= 300
    # at most the line being written when the kill came may be torn (the kernel can stop a write
    # at a page boundary on a fatal signal); it is the last line, and it is reported, not dropped
    n_lines = len(path.read_bytes().splitlines())
    messages = [str(w.message) for w in caught]
    assert len(messages) <= 1 and all(f"{path}:{n_lines}: skipped (truncated" in m for m in messages)


def test_two_writers_never_interleave(tmp_path):
    path = tmp_path / "s.jsonl"
    procs = [_writer(path, 1000, name) for name in ("kernel1", "kernel2")]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 2000
    records = [json.loads(x) for x in lines]        # every line parses on its own
    for r in records:
        fb.validate_record(r)
    assert len({r["id"] for r in records}) == 2000
    assert sum(r["annotator"] == "kernel1" for r in records) == 1000


# ---- export ---------------------------------------------------------------------------


def test_export_in_trl_preference_format(tmp_path):
    judgements = [
        pair_record("p1 .", "good .", "bad .", "a"),
        pair_record("p2 .", "meh .", "nice .", "b", swapped=True),
        pair_record("p3 .", "x .", "y .", "tie"),
        pair_record("p4 .", "x .", "z .", "both_bad"),
        pair_record("p5 .", "x .", "w .", "skip"),
        pair_record("p6 .", "cal good .", "cal bad .", "a", calibration=True, gold="a"),
        pair_record("p1 .", "good .", "bad .", "a", repeat=True),
        score_record("p7 .", "c .", 5),
    ]
    ds = to_preference_dataset(judgements)
    assert list(ds["prompt"]) == ["p1 .", "p2 ."]
    assert list(ds["chosen"]) == [" good .", " nice ."] and list(ds["rejected"]) == [" bad .", " meh ."]
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert len(to_preference_dataset(judgements, include_calibration=True, include_repeats=True)) == 4


def _tiny_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for t in texts:
        for word in t.split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def _tiny_preference_data(seed: int):
    """Eight exported judgements in TRL's format, and a word-level tokenizer for them."""
    rng = np.random.default_rng(seed)
    words = ["great", "awful", "good", "bad", "film", "book"]
    judgements = [pair_record(f"i saw this {rng.choice(words[4:])} .", f"it was {rng.choice(words)} .",
                              f"it was very {rng.choice(words)} .", "a" if i % 2 else "b") for i in range(8)]
    ds = to_preference_dataset(judgements)
    tokenizer = _tiny_tokenizer(list(ds["prompt"]) + list(ds["chosen"]) + list(ds["rejected"]))
    return ds, tokenizer


def test_export_trains_trl_reward_trainer_one_step(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    ds, tokenizer = _tiny_preference_data(seed=0)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16,
                                                     n_layer=1, n_head=2, num_labels=1,
                                                     pad_token_id=tokenizer.pad_token_id))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=4,
                        learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1,
                        use_cpu=True, dataloader_num_workers=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "score.weight" in moved and len(moved) > len(before) // 2
    # the tokenized text is prompt + chosen, with the word boundary kept
    row = trainer.train_dataset[0]
    assert tokenizer.unk_token_id not in row["chosen_ids"]


# ---- simulated annotator --------------------------------------------------------------


def _stub_gold(texts, prompts=None):
    """A stand-in gold preference: +1 per 'good', -1 per 'bad'."""
    return np.array([t.split().count("good") - t.split().count("bad") for t in texts], float)


def test_bradley_terry_probability_by_hand():
    ann = SimulatedAnnotator(_stub_gold, temperature=0.5)
    # g_a - g_b = 2 - (-1) = 3 ; P = 1 / (1 + e^{-6})
    p = ann.prob_a(["good good ."], ["bad ."])
    assert p[0] == pytest.approx(1 / (1 + np.exp(-6.0)))
    biased = SimulatedAnnotator(_stub_gold, temperature=1.0, position_bias=0.7, length_bias=0.2)
    # a shown second: logit = (0 - 0)/1 - 0.7 + 0.2 * (4 - 2)
    assert biased.prob_a(["x y z ."], ["w ."], a_first=False)[0] == pytest.approx(1 / (1 + np.exp(0.7 - 0.4)))
    assert biased.prob_a(["x y z ."], ["w ."], a_first=True)[0] == pytest.approx(1 / (1 + np.exp(-0.7 - 0.4)))


def test_label_frequencies_match_probabilities():
    ann = SimulatedAnnotator(_stub_gold, temperature=1.0)
    n = 20_000
    labels = ann.label(["good ."] * n, ["x ."] * n, rng=1)
    assert np.mean([x == "a" for x in labels]) == pytest.approx(1 / (1 + np.exp(-1)), abs=0.01)
    sharp = SimulatedAnnotator(_stub_gold, temperature=1e-3)
    assert sharp.label(["good .", "bad ."], ["bad .", "good ."], rng=0) == ["a", "b"]


def test_position_bias_is_measurable():
    ann = SimulatedAnnotator(_stub_gold, temperature=1.0, position_bias=1.0)
    pairs = [("p .", "x .", "y .")] * 4000
    records = ann.records(pairs, rng=3)
    rate = an.position_bias_rate(records)
    assert rate == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.03)


def test_best_accuracy_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n_a, n_b = rng.integers(0, 3, 3000), rng.integers(0, 3, 3000)
    a = ["good " * k + "." for k in n_a]
    b = ["good " * k + "." for k in n_b]
    ann = SimulatedAnnotator(_stub_gold, temperature=0.8)
    gaps = _stub_gold(a) - _stub_gold(b)
    expected = best_accuracy(gaps, 0.8)
    # hand formula: mean over pairs of sigma(|gap| / T)
    assert expected == pytest.approx(np.mean(1 / (1 + np.exp(-np.abs(gaps) / 0.8))))
    hits = []
    for seed in range(20):
        labels = ann.label(a, b, rng=seed)
        gold = [an.gold_choice(x, y) for x, y in zip(_stub_gold(a), _stub_gold(b))]
        # on gold ties either answer "agrees" half the time: count 0.5, as sigma(0) does
        hits.append(np.mean([0.5 if g == "tie" else float(g == l) for g, l in zip(gold, labels)]))
    assert np.mean(hits) == pytest.approx(expected, abs=0.01)


# ---- agreement -------------------------------------------------------------------------


def test_kappa_hand_computed_example():
    r1 = list("aaaaabbbbb")
    r2 = list("aaaabbbbaa")
    # p_o = 7/10; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert cohen_kappa(r1, r2) == pytest.approx(0.4)
    ag = agreement(r1, r2)
    assert ag.raw == pytest.approx(0.7) and ag.n == 10
    assert cohen_kappa(list("ab"), list("ab")) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa(list("aa"), list("aa")))


def _sklearn_kappa(y1, y2):
    """scikit-learn's cohen_kappa_score (weights=None), written out: confusion matrix form."""
    labels = sorted(set(y1) | set(y2))
    idx = {k: i for i, k in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)))
    for x, y in zip(y1, y2):
        confusion[idx[x], idx[y]] += 1
    sum0, sum1 = confusion.sum(axis=0), confusion.sum(axis=1)
    expected = np.outer(sum1, sum0) / sum1.sum()
    w_mat = np.ones_like(confusion) - np.eye(len(labels))
    return 1 - np.sum(w_mat * confusion) / np.sum(w_mat * expected)


def test_kappa_matches_sklearn_formula():
    rng = np.random.default_rng(0)
    cats = ["a", "b", "tie", "both_bad"]
    for _ in range(20):
        n = int(rng.integers(5, 60))
        y1 = list(rng.choice(cats, n))
        y2 = [y if rng.random() < 0.6 else rng.choice(cats) for y in y1]
        assert cohen_kappa(y1, y2) == pytest.approx(_sklearn_kappa(y1, y2))


def test_annotator_agreement_matches_by_item_and_drops_skips():
    you = [pair_record(f"p{i} .", "x .", "y .", c) for i, c in enumerate(["a", "b", "skip", "tie"])]
    sim = [pair_record(f"p{i} .", "x .", "y .", c, annotator="sim") for i, c in enumerate(["a", "a", "a", "tie"])][::-1]
    ag = an.annotator_agreement(you, sim)
    assert ag.n == 3 and ag.raw == pytest.approx(2 / 3)


def test_write_preferences_is_fresh_each_time(tmp_path):
    path = tmp_path / "preferences.jsonl"
    fb.write_preferences(path, [_pair(1), _pair(2)])
    fb.write_preferences(path, [_pair(3)])
    assert [r["prompt"] for r in load_records(path)] == ["prompt 3 ."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preferences.jsonl"]


def test_committed_example_store_loads():
    path = REPO / "data" / "feedback" / "example.jsonl"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = load_records(path)
    assert len(records) >= 5
    assert len(to_preference_dataset(live_judgements(records))) >= 2


def trl_dpo_one_step(ds, tokenizer, out_dir):
    """One step of TRL's DPOTrainer on ``ds`` with a tiny GPT-2 (its own reference, a copy).
    Returns (trainer, train result, the parameters before the step)."""
    import copy

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=tokenizer.eos_token_id))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=4,
                     learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds,
                         processing_class=tokenizer)
    return trainer, trainer.train(), before


def test_export_trains_trl_dpo_trainer_one_step(tmp_path):
    import torch

    ds, tokenizer = _tiny_preference_data(seed=1)
    trainer, result, before = trl_dpo_one_step(ds, tokenizer, tmp_path / "dpo")
    # at step 0 policy == reference, so the DPO loss is exactly log 2
    assert result.global_step == 1 and result.training_loss == pytest.approx(np.log(2), abs=1e-4)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    row = trainer.train_dataset[0]
    assert tokenizer.unk_token_id not in row["prompt_ids"] + row["chosen_ids"] + row["rejected_ids"]
