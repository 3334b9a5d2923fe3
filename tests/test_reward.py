"""Tests of rlhf_utils.reward and rlhf_utils.preferences: each against a hand-worked value or an
independent reference. (The reward model's evaluation helpers -- calibration, agreement with
the gold order, residuals -- are tested in tests/test_evaluation.py.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_utils import preferences as P
from rlhf_utils import reward as R
from rlhf_utils.config import RewardConfig
from rlhf_utils.ops import pad_left, pad_right

PAD = {"left": pad_left, "right": pad_right}

WORDS = ("i loved hated liked this film book restaurant . the acting food plot was were "
         "great bad good awful dull it very").split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def word_tokenizer(words=WORDS, specials=SPECIALS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer like the course's (BOS prepended, no EOS added, pad != eos)."""
    vocab = {t: i for i, t in enumerate(list(specials) + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizer():
    """The course's own tokenizer (rlhf_utils.lm), trained on a few sentences."""
    from rlhf_utils import lm

    return lm.train_tokenizer([" ".join(WORDS)])


def tiny_policy(tokenizer, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture()
def rm(tokenizer):
    """A reward model with a random head (a zero head would score everything 0)."""
    return R.RewardModel.from_policy(tiny_policy(tokenizer), tokenizer, init_std=0.25, seed=0)


PROMPTS = ["i loved this film .", "i hated this book .", "i liked this restaurant ."]
COMPLETIONS = ["the acting was great .", "it was bad .", "the food was very very good . it was great ."]


# ---- the Bradley-Terry loss ----------------------------------------------------------


def test_bt_loss_hand_computed():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    # -log sigma(1) = log(1 + e^-1) = 0.31326169; -log sigma(0) = log 2 = 0.69314718;
    # -log sigma(-2) = log(1 + e^2) = 2.12692801
    expected = [0.31326169, 0.69314718, 2.12692801]
    got = R.bradley_terry_loss(rc, rr, reduction="none")
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert R.bradley_terry_loss(rc, rr).item() == pytest.approx(sum(expected) / 3, abs=1e-6)


def test_bt_loss_margin_hand_computed():
    # d = 1, margin 0.5: -log sigma(0.5) = log(1 + e^-0.5) = 0.47407698
    got = R.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=0.5)
    assert got.item() == pytest.approx(0.47407698, abs=1e-6)


def test_bt_loss_ties_half_target():
    d = torch.tensor([2.0, 0.0])
    tie = torch.tensor([True, True])
    got = R.bradley_terry_loss(d, torch.zeros(2), tie=tie, margin=1.0, reduction="none")
    # -1/2 log sigma(2) - 1/2 log sigma(-2) = 1/2 (0.12692801 + 2.12692801) = 1.12692801; at d=0: log 2
    assert got.tolist() == pytest.approx([1.12692801, math.log(2)], abs=1e-6)
    # a tie is symmetric in the order and smallest at d = 0
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    loss = R.bradley_terry_loss(x, torch.zeros(61), tie=torch.ones(61, dtype=torch.bool), reduction="none")
    assert torch.allclose(loss, loss.flip(0), atol=1e-6)
    assert int(loss.argmin()) == 30
    # ties mixed with strict pairs: only the flagged ones change
    mixed = R.bradley_terry_loss(torch.tensor([1.0, 1.0]), torch.zeros(2), tie=torch.tensor([False, True]),
                                 reduction="none")
    assert mixed[0].item() == pytest.approx(0.31326169, abs=1e-6)


def test_bt_loss_no_overflow():
    got = R.bradley_terry_loss(torch.tensor([-200.0, 200.0]), torch.zeros(2), reduction="none")
    assert torch.isfinite(got).all() and got[0].item() == pytest.approx(200.0) and got[1].item() == pytest.approx(0.0)


# ---- scoring reads the right token ---------------------------------------------------


def test_encoding_convention(tokenizer):
    from rlhf_utils import lm

    ids = R.encode_for_reward(tokenizer, ["i loved this film ."], ["  the acting was great ."])[0]
    expected = tokenizer("i loved this film . the acting was great .")["input_ids"] + [tokenizer.eos_token_id]
    assert ids == expected and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # the policy's layout: lm.encode_prompts (BOS + prompt) then the response with its EOS
    p_ids, p_mask = lm.encode_prompts(tokenizer, PROMPTS)
    r_ids, r_mask = lm.encode_responses(tokenizer, COMPLETIONS)
    for i, got in enumerate(R.encode_for_reward(tokenizer, PROMPTS, COMPLETIONS)):
        policy_layout = p_ids[i][p_mask[i].bool()].tolist() + r_ids[i][r_mask[i].bool()].tolist()
        assert got == policy_layout
    # empty completion: prompt + EOS
    assert R.encode_for_reward(tokenizer, ["i loved this film ."], [""])[0] == \
        tokenizer("i loved this film .")["input_ids"] + [tokenizer.eos_token_id]


def test_same_score_left_right_and_no_padding(rm, tokenizer):
    ids = rm.encode(PROMPTS, COMPLETIONS)
    alone = torch.stack([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in ids]).squeeze(-1)
    with torch.no_grad():
        for side in ("left", "right"):
            x, m = PAD[side](ids, tokenizer.pad_token_id)
            assert (m == 0).any()  # the lengths differ: there is padding
            assert torch.allclose(rm(x, m), alone, atol=1e-5), side
    assert torch.allclose(rm.raw_score(PROMPTS, COMPLETIONS), alone, atol=1e-5)
    # batching does not change a score
    assert torch.allclose(rm.raw_score(PROMPTS, COMPLETIONS, batch_size=1), alone, atol=1e-5)


def test_score_reads_the_eos_position(rm, tokenizer):
    """The head sees the hidden state at the EOS: compare with the backbone's own output."""
    ids = rm.encode(PROMPTS[:1], COMPLETIONS[:1])[0]
    with torch.no_grad():
        h = rm.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # hidden state at EOS
        expected = (rm.head.weight[0] @ h).item()
        assert rm.raw_score(PROMPTS[:1], COMPLETIONS[:1]).item() == pytest.approx(expected, abs=1e-5)
        # and it differs from reading the token before the EOS
        h_before = rm.backbone(input_ids=torch.tensor([ids[:-1]])).last_hidden_state[0, -1]
        assert abs((rm.head.weight[0] @ h_before).item() - (rm.head.weight[0] @ h).item()) > 1e-4


def test_pad_token_content_does_not_matter(rm, tokenizer):
    ids = rm.encode(PROMPTS, COMPLETIONS)
    x, m = pad_left(ids, tokenizer.pad_token_id)
    x2 = torch.where(m.bool(), x, torch.full_like(x, tokenizer.eos_token_id))  # pad filled with EOS ids
    with torch.no_grad():
        assert torch.allclose(rm(x, m), rm(x2, m), atol=1e-5)


def test_hf_sequence_classification_trap(tokenizer):
    """Why RewardModel is not GPT2ForSequenceClassification: without position ids from the
    mask, the same text scores differently once left-padded."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=2, n_head=2, num_labels=1,
                     pad_token_id=tokenizer.pad_token_id)
    hf = GPT2ForSequenceClassification(cfg).eval()
    ids = R.encode_for_reward(tokenizer, PROMPTS, COMPLETIONS)
    x, m = pad_left(ids, tokenizer.pad_token_id)
    with torch.no_grad():
        alone = torch.cat([hf(input_ids=torch.tensor([s])).logits[:, 0] for s in ids])
        padded = hf(input_ids=x, attention_mask=m).logits[:, 0]
    shorter = m.sum(-1) < m.shape[1]
    assert not torch.allclose(padded[shorter], alone[shorter], atol=1e-4)


# ---- gradient of the head ------------------------------------------------------------


def test_head_gradcheck():
    torch.manual_seed(0)
    w = (torch.randn(1, 8, dtype=torch.float64) / 3).requires_grad_(True)  # the head: Linear(8, 1, bias=False)
    h_c = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    h_r = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    tie = torch.tensor([False, True, False, False, True])

    def f(w, hc, hr):
        rc = (hc @ w.T).squeeze(-1)
        rr = (hr @ w.T).squeeze(-1)
        return R.bradley_terry_loss(rc, rr, tie=tie, margin=0.3)

    assert torch.autograd.gradcheck(f, (w, h_c, h_r), eps=1e-6, atol=1e-5)


def test_head_gradcheck_through_model(rm):
    """gradcheck of the real head (float64) on hidden states of the real backbone."""
    ids = rm.encode(PROMPTS, COMPLETIONS)
    x, m = pad_left(ids, rm.tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = rm.backbone(input_ids=x, attention_mask=m,
                             position_ids=(m.cumsum(-1) - 1).clamp(min=0)).last_hidden_state  # [B, T, H]
    h = hidden[:, -1].double().requires_grad_(True)  # left padded: the EOS is last
    head = rm.head.double()
    f = lambda h: R.bradley_terry_loss(head(h[:2]).squeeze(-1), head(h[1:]).squeeze(-1))
    assert torch.autograd.gradcheck(f, (h,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda w: R.bradley_terry_loss(h[:2].detach() @ w.T, h[1:].detach() @ w.T),
                                    (head.weight.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_bt_gradient_formula():
    # d/dd [-log sigma(d)] = -(1 - sigma(d)) = sigma(d) - 1
    d = torch.tensor([0.3, -1.2], requires_grad=True)
    R.bradley_terry_loss(d, torch.zeros(2), reduction="none").sum().backward()
    assert torch.allclose(d.grad, torch.sigmoid(d.detach()) - 1, atol=1e-6)


# ---- normalisation, save / load --------------------------------------------------------


def test_normalisation_mean0_std1(rm):
    prompts = PROMPTS * 4
    comps = [c + " it was good ." * (i % 3) for i, c in enumerate(COMPLETIONS * 4)]
    raw = rm.raw_score(prompts, comps).double().numpy()
    mean, std = rm.normalise(prompts, comps)
    assert mean == pytest.approx(raw.mean(), abs=1e-6) and std == pytest.approx(raw.std(), abs=1e-6)
    s = rm.score(prompts, comps).double().numpy()
    assert s.mean() == pytest.approx(0.0, abs=1e-5) and s.std() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="same reward"):
        rm.normalise(PROMPTS[:1] * 2, COMPLETIONS[:1] * 2)


def test_score_signature_no_grad(rm):
    s = rm.score(PROMPTS, COMPLETIONS)
    assert s.shape == (3,) and s.dtype == torch.float32 and not s.requires_grad
    assert rm.score([], []).shape == (0,)


def test_save_load_identical_scores(rm, tmp_path):
    rm.normalise(PROMPTS * 2, [c + " it was good ." * i for i, c in enumerate(COMPLETIONS * 2)])
    path = rm.save(tmp_path / "reward")
    files = {p.name for p in path.iterdir()}
    assert {"config.json", R.BACKBONE_FILE, R.HEAD_FILE, R.META_FILE, "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # no pickle
    meta = json.loads((path / R.META_FILE).read_text())
    assert meta["gain"] == float(rm.gain)
    loaded = R.RewardModel.load(path)
    assert torch.equal(loaded.score(PROMPTS, COMPLETIONS), rm.score(PROMPTS, COMPLETIONS))
    # saving again replaces the folder, and leaves no temporary folder behind
    rm.normalise(PROMPTS * 2, [c + " it was bad ." * i for i, c in enumerate(COMPLETIONS * 2)])
    rm.save(path)
    assert torch.equal(R.RewardModel.load(path).score(PROMPTS, COMPLETIONS), rm.score(PROMPTS, COMPLETIONS))
    assert [p.name for p in tmp_path.iterdir()] == ["reward"]
    R.check_same_tokenizer(loaded.tokenizer, rm.tokenizer)


def test_load_incomplete_folder(rm, tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 05"):
        R.RewardModel.load(tmp_path / "nothing")
    path = rm.save(tmp_path / "reward")
    (path / R.HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=R.HEAD_FILE):
        R.RewardModel.load(path)


def test_from_policy_leaves_policy_alone(tokenizer):
    policy = tiny_policy(tokenizer)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    rm = R.RewardModel.from_policy(policy, tokenizer)
    with torch.no_grad():
        for p in rm.backbone.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert torch.allclose(rm.backbone.wte.weight - 1.0, policy.transformer.wte.weight, atol=1e-6)


# ---- bad input -------------------------------------------------------------------------


def test_pad_equal_eos_refused():
    tok = word_tokenizer()
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="pad_token_id equals eos_token_id"):
        R.RewardModel(tiny_policy(word_tokenizer()).transformer, tok)


def test_check_same_tokenizer():
    tokenizer = word_tokenizer()
    R.check_same_tokenizer(tokenizer, word_tokenizer())
    other = word_tokenizer(words=list(reversed(WORDS)))
    with pytest.raises(ValueError, match="different tokenizers.*from_policy"):
        R.check_same_tokenizer(tokenizer, other)
    extra = word_tokenizer(words=WORDS + ["wonderful"])
    with pytest.raises(ValueError, match="wonderful"):
        R.check_same_tokenizer(tokenizer, extra)
    swapped = word_tokenizer(specials=["<pad>", "<eos>", "<bos>", "<unk>"])
    with pytest.raises(ValueError, match="different"):
        R.check_same_tokenizer(tokenizer, swapped)


def _pairs(n, tie_every=0):
    return [P.PreferencePair("i loved this film .", "it was great .", "it was bad .",
                             tie=bool(tie_every and i % tie_every == 0)) for i in range(n)]


def test_split_pairs_counts_and_too_few():
    assert P.min_pairs_needed(0.2) == 48  # round(48 * 0.2) = 10 held out, 38 to train
    train, held = P.split_pairs(_pairs(100), 0.2, seed=0)
    assert len(train) == 80 and len(held) == 20
    with pytest.raises(ValueError, match="needs at least 48.*notebook 04"):
        P.split_pairs(_pairs(47), 0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        P.split_pairs(_pairs(100), 1.0)


def test_train_learns_a_preference(tokenizer):
    """A tiny reward model learns "great" > "bad" from a few labelled pairs."""
    torch.manual_seed(0)
    rm = R.RewardModel.from_policy(tiny_policy(tokenizer), tokenizer)
    assert torch.all(rm.head.weight == 0)  # the default head starts at zero: P = 1/2 everywhere
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(80):
        p = PROMPTS[i % 3]
        good, bad = "the acting was great .", "the acting was bad ."
        if rng.random() < 0.5:
            good, bad = "it was good .", "it was awful ."
        pairs.append(P.PreferencePair(p, good, bad, tie=(i % 10 == 0)))
    train, held = P.split_pairs(pairs, 0.2, seed=0)
    cfg = RewardConfig(epochs=6, min_steps=0, batch_size=16, learning_rate=3e-3, eval_every=4, patience=100)
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    hist = R.train_reward_model(rm, train, held, cfg, progress=False)
    ev = R.evaluate_pairs(rm, held)
    assert ev.accuracy == 1.0 and ev.loss < hist.eval_loss[0]
    assert hist.eval_loss[hist.eval_step.index(hist.best_step)] == pytest.approx(min(hist.eval_loss))
    # every trainable tensor moved (TRL-style check) -- except the final LayerNorm's bias:
    # head(ln_f(x)) = w . (gamma * xhat + beta), and w . beta is a constant offset, which
    # the Bradley-Terry loss (a function of differences only) cannot see. Its gradient is 0
    # only up to rounding, and Adam divides by sqrt(v), so rounding noise can still move it
    # by about lr per step: whether it moves depends on the thread count, so it is not checked
    still = [k for k, v in rm.named_parameters() if torch.equal(v, before[k])]
    assert set(still) <= {"backbone.ln_f.bias"}


def test_early_stopping_restores_best(tokenizer):
    rm = R.RewardModel.from_policy(tiny_policy(tokenizer), tokenizer, init_std=0.25)
    # held-out labels contradict the training labels: held-out loss rises, training stops
    train = [P.PreferencePair("i loved this film .", "it was great .", "it was bad .")] * 40
    held = [P.PreferencePair("i loved this film .", "it was bad .", "it was great .")] * 10
    cfg = RewardConfig(epochs=20, min_steps=0, batch_size=8, learning_rate=3e-3, eval_every=1, patience=3)
    hist = R.train_reward_model(rm, train, held, cfg, progress=False)
    assert hist.stopped_early and hist.best_step == 0 and len(hist.eval_step) == 4
    assert R.evaluate_pairs(rm, held).loss == pytest.approx(hist.eval_loss[0], abs=1e-5)
    # never before min_steps
    rm2 = R.RewardModel.from_policy(tiny_policy(tokenizer), tokenizer, init_std=0.25)
    cfg = RewardConfig(epochs=20, min_steps=8, batch_size=8, learning_rate=3e-3, eval_every=1, patience=3)
    hist = R.train_reward_model(rm2, train, held, cfg, progress=False)
    assert hist.stopped_early and hist.step[-1] == 8 and hist.best_step == 0


def test_min_steps_adds_epochs(rm):
    cfg = RewardConfig(epochs=1, min_steps=7, batch_size=10, eval_every=100, patience=100)
    hist = R.train_reward_model(rm, _pairs(20), _pairs(10), cfg, progress=False)
    assert hist.step == list(range(1, 9))  # 2 steps per epoch; ceil(7 / 2) = 4 epochs
    assert hist.eval_step == [0, 2, 4, 6, 8]  # eval_every=100 is capped at once per epoch


def test_train_empty_inputs(rm):
    with pytest.raises(ValueError, match="notebook 04"):
        R.train_reward_model(rm, [], _pairs(10), RewardConfig(), progress=False)


# ---- reading the preference store ------------------------------------------------------


def test_pairs_from_store(tmp_path):
    from rlhf_utils import feedback as fb

    path = tmp_path / "preferences.jsonl"
    p = "i loved this film ."
    recs = [
        fb.pair_record(p, "x1 .", "y1 .", "a", annotator="you"),
        fb.pair_record(p, "x2 .", "y2 .", "b", annotator="simulated"),
        fb.pair_record(p, "x3 .", "y3 .", "tie", annotator="you"),
        fb.pair_record(p, "x4 .", "y4 .", "both_bad", annotator="you"),
        fb.pair_record(p, "x5 .", "y5 .", "skip", annotator="you"),
        fb.pair_record(p, "x1 .", "y1 .", "b", annotator="you", repeat=True),
        fb.pair_record(p, "x6 .", "y6 .", "a", annotator="you", calibration=True, gold="a"),
        fb.score_record(p, "x7 .", 4),
    ]
    wrong = fb.pair_record(p, "x8 .", "y8 .", "a", annotator="you")
    recs += [wrong, fb.undo_record(wrong)]
    fb.write_preferences(path, recs)
    pairs = P.load_preference_pairs(path)
    assert [(q.chosen, q.rejected, q.tie, q.annotator) for q in pairs] == [
        ("x1 .", "y1 .", False, "you"), ("y2 .", "x2 .", False, "simulated"), ("x3 .", "y3 .", True, "you")]
    assert [P.is_reader(q.annotator) for q in pairs] == [True, False, True]
    assert len(P.load_preference_pairs(path, include_calibration=True)) == 4


def test_missing_or_empty_preference_file(tmp_path, monkeypatch):
    from rlhf_utils import feedback as fb

    monkeypatch.setenv("RLHF_FEEDBACK", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="run notebook 04"):
        P.load_preference_pairs()
    path = tmp_path / "preferences.jsonl"
    fb.write_preferences(path, [fb.pair_record("p .", "a .", "b .", "skip")])
    with pytest.raises(ValueError, match="no pairwise judgement"):
        P.load_preference_pairs(path)


# ---- sampling pairs to label ----------------------------------------------------------


def test_sample_pairs_two_distinct_completions_of_one_prompt(tokenizer):
    from rlhf_utils import lm

    policy = tiny_policy(tokenizer)
    prompts = PROMPTS * 4
    pairs = P.sample_pairs(policy, tokenizer, prompts, n=6, max_new_tokens=6, seed=0, batch_size=5, progress=False)
    assert len(pairs) == 6 and all(a != b for _, a, b in pairs) and all(p in PROMPTS for p, _, _ in pairs)
    assert pairs == P.sample_pairs(policy, tokenizer, prompts, n=6, max_new_tokens=6, seed=0, batch_size=5,
                                   progress=False)
    assert pairs != P.sample_pairs(policy, tokenizer, prompts, n=6, max_new_tokens=6, seed=1, batch_size=5,
                                   progress=False)
    # one batch: each prompt twice in a row, one seeded generator, identical pairs dropped
    s = lm.sample(policy, tokenizer, [p for p in prompts for _ in range(2)], 6,
                  generator=torch.Generator().manual_seed(0))
    expected = [(p, a, b) for p, a, b in zip(prompts, s.texts[0::2], s.texts[1::2]) if a != b]
    assert P.sample_pairs(policy, tokenizer, prompts, n=len(expected), max_new_tokens=6, seed=0,
                          progress=False) == expected
    with pytest.raises(ValueError, match="distinct pairs from 12 prompts, 100 wanted: pass more prompts"):
        P.sample_pairs(policy, tokenizer, prompts, n=100, max_new_tokens=6, progress=False)


def test_pairs_from_judgements_orients_chosen_and_rejected():
    from rlhf_utils import feedback as fb

    recs = [fb.pair_record("p .", "x .", "y .", "b", annotator="simulated-0.15"),
            fb.pair_record("p .", "u .", "v .", "tie", annotator="ann"),
            fb.pair_record("p .", "c .", "d .", "a", calibration=True, gold="a")]
    assert P.pairs_from_judgements(recs) == [P.PreferencePair("p .", "y .", "x .", False, "simulated-0.15"),
                                             P.PreferencePair("p .", "u .", "v .", True, "ann")]
    assert len(P.pairs_from_judgements(recs, include_calibration=True)) == 3
    assert not P.is_reader("simulated-0.15") and P.is_reader("ann")
