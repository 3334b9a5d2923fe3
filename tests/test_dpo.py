"""Tests of rlhf_utils.dpo (DPO, IPO, best-of-n) and of the TRL preference file
(rlhf_utils.preferences.write_trl_preferences / load_trl_preferences): each against a value
worked by hand, a naive loop, an exact enumeration, or TRL itself."""

from __future__ import annotations

import copy
import dataclasses
import math
import zlib

import numpy as np
import pytest
import torch

from rlhf_utils import annotators, dpo, lm
from rlhf_utils import feedback as fb
from rlhf_utils import preferences as P
from rlhf_utils.config import PRESETS, DPOConfig, LMConfig
from rlhf_utils.world import World

T = torch.tensor


# ---- the losses, by hand -------------------------------------------------------------


def test_dpo_loss_by_hand():
    # pair 1: h = (-1 - -2) - (-3 - -2) = 2, beta 0.5: -log sigma(1) = log(1 + e^-1) = 0.31326169
    # pair 2: h = (-2 - -1) - (-1 - -1) = -1:         -log sigma(-0.5) = log(1 + e^0.5) = 0.97407698
    loss, chosen, rejected = dpo.dpo_loss(T([-1.0, -2.0]), T([-3.0, -1.0]), T([-2.0, -1.0]), T([-2.0, -1.0]), 0.5)
    assert loss.item() == pytest.approx((0.31326169 + 0.97407698) / 2, abs=1e-6)
    assert torch.allclose(chosen, T([0.5, -0.5])) and torch.allclose(rejected, T([-0.5, 0.0]))
    assert not chosen.requires_grad
    # policy = reference: every pair at sigma(0), loss log 2
    same = T([-4.0, -7.0])
    assert dpo.dpo_loss(same, same - 1, same, same - 1, 0.1)[0].item() == pytest.approx(math.log(2))


def test_dpo_loss_gradient_sign():
    pc, pr = T([-5.0], requires_grad=True), T([-4.0], requires_grad=True)
    loss, _, _ = dpo.dpo_loss(pc, pr, T([-5.5]), T([-4.0]), beta=0.1)
    loss.backward()
    # d/d pc of -log sigma(beta h) = -beta sigma(-beta h), h = 0.5
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.05)), abs=1e-7)
    assert pc.grad.item() < 0 < pr.grad.item()  # a likelier chosen (or unlikelier rejected) lowers the loss
    bigger = dpo.dpo_loss(T([-4.9]), T([-4.0]), T([-5.5]), T([-4.0]), beta=0.1)[0]
    assert bigger.item() < loss.item()


def test_cdpo_label_smoothing_by_hand():
    # h = 2, beta = 0.5, eps = 0.1: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1) = 0.9 * 0.31326169 + 0.1 * 1.31326169
    loss, _, _ = dpo.dpo_loss(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), 0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.9 * 0.31326169 + 0.1 * 1.31326169, abs=1e-6)


def test_ipo_loss_by_hand():
    # h = 2: beta 0.5 -> (2 - 1)^2 = 1; beta 0.1 -> (2 - 5)^2 = 9; policy = reference -> (1 / (2 beta))^2
    args = (T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]))
    assert dpo.dpo_loss(*args, 0.5, "ipo")[0].item() == pytest.approx(1.0)
    assert dpo.dpo_loss(*args, 0.1, "ipo")[0].item() == pytest.approx(9.0)
    same = T([-3.0])
    assert dpo.dpo_loss(same, same, same, same, 0.1, "ipo")[0].item() == pytest.approx(25.0)


def test_loss_bad_inputs():
    x = T([-1.0])
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta must be > 0"):
            dpo.dpo_loss(x, x, x, x, beta)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo.dpo_loss(x, x, x, x, 0.1, "hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo.dpo_loss(x, x, x, x, 0.1, "ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="same shape"):
        dpo.dpo_loss(x, T([-1.0, -2.0]), x, x, 0.1)


# ---- sequence log-probs and the implicit reward -----------------------------------------


@pytest.fixture(scope="module")
def world():
    return World(0)


@pytest.fixture(scope="module")
def tokenizer(world):
    return lm.train_tokenizer(world.corpus(3000, seed=0))


def tiny_model(tokenizer, seed=0, n_embd=32):
    return lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=n_embd, n_positions=64, seed=seed), tokenizer).eval()


def naive_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """log pi(completion + EOS | BOS + prompt): one unpadded sequence, a loop over its tokens."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = [tokenizer.bos_token_id] + p + c
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # [T, V]
    return sum(float(torch.log_softmax(logits[len(p) + k], -1)[tok]) for k, tok in enumerate(c))


def test_sequence_logprobs_and_implicit_reward_by_hand(world, tokenizer):
    policy, reference = tiny_model(tokenizer, 0), tiny_model(tokenizer, 1)
    prompts = [p for p, _ in world.demonstrations(5, seed=3)]
    completions = [c for _, c in world.demonstrations(5, seed=4)]  # ragged lengths: padding on both sides
    got = dpo.sequence_logprobs(policy, tokenizer, prompts, completions)
    naive = [naive_logprob(policy, tokenizer, p, c) for p, c in zip(prompts, completions)]
    assert torch.allclose(got.double(), torch.tensor(naive, dtype=torch.float64), atol=1e-4)
    assert got.requires_grad
    batched = dpo.sequence_logprobs(policy, tokenizer, prompts, completions, batch_size=2)
    assert not batched.requires_grad and torch.allclose(batched, got.detach(), atol=1e-5)
    reward = dpo.implicit_reward(policy, reference, tokenizer, prompts, completions, beta=0.2)
    by_hand = [0.2 * (naive_logprob(policy, tokenizer, p, c) - naive_logprob(reference, tokenizer, p, c))
               for p, c in zip(prompts, completions)]
    assert torch.allclose(reward.double(), torch.tensor(by_hand, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo.implicit_reward(policy, reference, tokenizer, prompts, completions, beta=0)


# ---- training ---------------------------------------------------------------------------


def labelled_judgements(world, n: int, seed: int = 0) -> list[dict]:
    """``n`` pairs of two world reviews of one prompt (defects and all), labelled by the simulated annotator."""
    reviews = world.sample_reviews(2 * n, seed=seed)
    pairs = [(a.prompt, a.completion, b.completion) for a, b in zip(reviews[0::2], reviews[1::2])
             if a.completion != b.completion]
    return annotators.SimulatedAnnotator.from_world(world, temperature=0.15).records(pairs, rng=seed)


def test_train_dpo_from_the_trl_file_learns_and_moves_every_parameter(world, tokenizer, tmp_path):
    path = P.write_trl_preferences(tmp_path / "preferences_trl.jsonl", labelled_judgements(world, 500))
    pairs = P.load_trl_preferences(path) + [P.PreferencePair("i saw this film .", "x .", "y .", tie=True)]
    train, held = P.split_pairs(pairs, 0.2, seed=0)
    policy = tiny_model(tokenizer, 0)
    reference = copy.deepcopy(policy)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    cfg = DPOConfig(epochs=3, batch_size=32, learning_rate=2e-3, warmup_steps=5, eval_every=10)
    hist = dpo.train_dpo(policy, reference, tokenizer, train, cfg, eval_pairs=held, progress=False)
    n_ties = sum(p.tie for p in train)
    assert (hist.n_pairs, hist.n_ties_dropped) == (len(train) - n_ties, n_ties)
    assert hist.eval_step[0] == 0 and hist.eval_loss[0] == pytest.approx(math.log(2), abs=1e-5)
    assert hist.eval_step[-1] == hist.step[-1] == cfg.epochs * math.ceil(hist.n_pairs / cfg.batch_size)
    assert hist.eval_accuracy[-1] > 0.6 and hist.eval_loss[-1] < hist.eval_loss[0]
    assert np.mean(hist.reward_accuracy[-5:]) > 0.6
    assert np.allclose(hist.reward_margin, np.subtract(hist.chosen_reward, hist.rejected_reward), atol=1e-5)
    still = [n for n, p in policy.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert still == [], f"parameters that never moved: {still}"
    assert all(torch.equal(p, ref_before[n]) for n, p in reference.named_parameters()), "the reference moved"


def test_train_dpo_bad_inputs(world, tokenizer):
    policy = tiny_model(tokenizer)
    pairs = [P.PreferencePair(p, c, c + " it was great .") for p, c in world.demonstrations(4, seed=1)]
    cfg = DPOConfig(epochs=1)
    # a reference built for another tokenizer (another vocabulary size)
    other_tok = lm.train_tokenizer(["a b c d ."])
    with pytest.raises(ValueError, match=r"different tokenizers.*load_checkpoint\(sft_path\)"):
        dpo.train_dpo(policy, tiny_model(other_tok), tokenizer, pairs, cfg, progress=False)
    # same size, different token ids: found through the reference's tokenizer
    shuffled = copy.deepcopy(tokenizer)
    shuffled.add_special_tokens({"additional_special_tokens": ["<new>"]})
    with pytest.raises(ValueError, match=r"different tokenizers.*vocabularies differ.*copy.deepcopy\(policy\)"):
        dpo.train_dpo(policy, copy.deepcopy(policy), tokenizer, pairs, cfg, progress=False,
                      reference_tokenizer=shuffled)
    with pytest.raises(ValueError, match="reference is the policy itself"):
        dpo.train_dpo(policy, policy, tokenizer, pairs, cfg, progress=False)
    with pytest.raises(ValueError, match="No training pairs"):
        dpo.train_dpo(policy, copy.deepcopy(policy), tokenizer, [], cfg, progress=False)
    ties = [dataclasses.replace(p, tie=True) for p in pairs]
    with pytest.raises(ValueError, match="are ties"):
        dpo.train_dpo(policy, copy.deepcopy(policy), tokenizer, ties, cfg, progress=False)


def test_dpo_config_validates_and_is_in_both_presets():
    for preset in PRESETS.values():
        assert isinstance(preset.dpo, DPOConfig) and preset.dpo.beta > 0
    assert (PRESETS["quick"].dpo.beta, PRESETS["full"].dpo.beta) == (1.0, 0.1)  # measured / the paper's
    assert PRESETS["full"].dpo.learning_rate < PRESETS["quick"].dpo.learning_rate
    for bad, phrase in ((dict(beta=0.0), r"DPOConfig.beta=0.0: must be > 0"), (dict(beta=-1.0), "beta"),
                        (dict(loss_type="kto"), "loss_type"), (dict(label_smoothing=0.5), "label_smoothing"),
                        (dict(loss_type="ipo", label_smoothing=0.1), "needs loss_type='sigmoid'"),
                        (dict(epochs=0), "epochs"), (dict(best_of_n=(4, 0)), "best_of_n"),
                        (dict(eval_fraction=1.0), "eval_fraction")):
        with pytest.raises(ValueError, match=phrase):
            DPOConfig(**bad)


# ---- best-of-n --------------------------------------------------------------------------


def crc_score(prompts, completions):
    """A scorer with (almost) no ties: a hash of the text, in [0, 1)."""
    return np.array([zlib.crc32(c.encode()) / 2**32 for c in completions])


def test_best_of_n_picks_the_argmax(world, tokenizer):
    policy = tiny_model(tokenizer)
    prompts = world.prompts(6, seed=2)
    out = dpo.best_of_n(policy, tokenizer, prompts, 5, crc_score, max_new_tokens=8, seed=3, batch_size=7)
    assert len(out.samples) == 6 and all(len(row) == 5 for row in out.samples) and out.all_scores.shape == (6, 5)
    for row, best, score, i in zip(out.samples, out.completions, out.scores.tolist(), out.index.tolist()):
        scores = crc_score(None, row)
        assert best == row[i] == row[int(np.argmax(scores))] and score == pytest.approx(max(scores))
    # the samples are the policy's: the same generator gives the same texts through lm.sample
    gen = torch.Generator().manual_seed(3)
    flat = [p for p in prompts for _ in range(5)]
    texts = lm.sample(policy, tokenizer, flat[:7], 8, generator=gen).texts
    assert [t for row in out.samples for t in row][:7] == texts
    # the recorded log-probs are log pi(y|x): for the completions that ended with EOS, sequence_logprobs'
    ended = [(p, t, float(lp)) for p, row, lps in zip(prompts, out.samples, out.logprobs) for t, lp in zip(row, lps)
             if len(tokenizer(t, add_special_tokens=False)["input_ids"]) < 8]
    assert ended
    fresh = dpo.sequence_logprobs(policy, tokenizer, [p for p, _, _ in ended], [t for _, t, _ in ended], batch_size=64)
    assert np.allclose(fresh.numpy(), [lp for _, _, lp in ended], atol=1e-4)
    # n = 1 is plain sampling; n < 1 is refused
    assert dpo.best_of_n(policy, tokenizer, prompts, 1, crc_score, 8).index.tolist() == [0] * 6
    for n in (0, -2):
        with pytest.raises(ValueError, match="n must be a whole number >= 1"):
            dpo.best_of_n(policy, tokenizer, prompts, n, crc_score, 8)
        with pytest.raises(ValueError, match="n must be a whole number >= 1"):
            dpo.best_of_n_kl_bound(n)


def test_best_of_n_kl_exact_by_hand_and_below_the_bound():
    assert dpo.best_of_n_kl_bound(1) == 0.0 and dpo.best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    # two outcomes of 1/2, n = 2: pi_bon = (1/4, 3/4); KL = 1/4 log(1/2) + 3/4 log(3/2)
    assert dpo.best_of_n_kl_exact([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    # equal scores are one outcome: nothing to choose, KL 0
    assert dpo.best_of_n_kl_exact([0.2, 0.3, 0.5], [1.0, 1.0, 1.0], 8) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    for n in (2, 4, 16):
        bound = dpo.best_of_n_kl_bound(n)
        many = rng.dirichlet(np.ones(20_000))  # ties rare: every outcome has a tiny probability
        assert bound - 2e-3 < dpo.best_of_n_kl_exact(many, rng.random(20_000), n) <= bound
        # four equally likely outcomes: the best of n is outcome k with (k/4)^n - ((k-1)/4)^n, below the bound
        bon = np.array([(k / 4) ** n - ((k - 1) / 4) ** n for k in range(1, 5)])
        by_hand = float(np.sum(bon * np.log(bon / 0.25)))
        assert dpo.best_of_n_kl_exact([0.25] * 4, [0.1, 0.2, 0.3, 0.4], n) == pytest.approx(by_hand, abs=1e-12)
        assert by_hand < bound - 0.015


@pytest.mark.parametrize("k, levels", [(5, None), (2000, None), (2000, 5), (50, 3)])
def test_best_of_n_kl_estimate_matches_the_exact_value(k, levels):
    """Monte Carlo on a toy categorical policy -- few outcomes (the same one drawn often), many (ties
    rare), and many outcomes on a few score levels (distinct outcomes tie, as texts under a coarse
    scorer) --: the estimate from one pool of samples against the exact enumeration, for several n."""
    rng = np.random.default_rng(k + (levels or 0))
    probs, scores = rng.dirichlet(np.ones(k)), rng.random(k)
    if levels:
        scores = np.floor(scores * levels) / levels
    draws = rng.choice(k, size=(3000, 64), p=probs)  # [P, N]: a pool of 64 samples for each of 3000 prompts
    for n in (2, 4, 8):
        estimate = dpo.best_of_n_kl_estimate(scores[draws], np.log(probs[draws]), n)
        exact = dpo.best_of_n_kl_exact(probs, scores, n)
        assert estimate == pytest.approx(exact, abs=0.03), n
        assert exact <= dpo.best_of_n_kl_bound(n)
    with pytest.raises(ValueError, match="N >= 2 n"):
        dpo.best_of_n_kl_estimate(scores[draws], np.log(probs[draws]), 40)


def test_best_of_n_kl_estimate_on_a_language_model(world, tokenizer):
    """An untrained LM almost never repeats a completion: the estimate sits at the bound."""
    policy = tiny_model(tokenizer)
    pool = dpo.best_of_n(policy, tokenizer, world.prompts(150, seed=5), 64, crc_score, max_new_tokens=6, seed=0)
    assert dpo.best_of_n_kl_estimate(pool.all_scores, pool.logprobs, 1) == pytest.approx(0.0, abs=1e-9)
    for n in (2, 4, 8):
        estimate = dpo.best_of_n_kl_estimate(pool.all_scores, pool.logprobs, n)
        assert abs(estimate - dpo.best_of_n_kl_bound(n)) < 0.06, (n, estimate)


# ---- the TRL preference file ------------------------------------------------------------


def test_trl_file_round_trips(tmp_path):
    from datasets import load_dataset

    judgements = [fb.pair_record("p1 .", "good .", "bad .", "a"),
                  fb.pair_record("p2 .", "meh .", "très bien .", "b", swapped=True),
                  fb.pair_record("p3 .", "x .", "y .", "tie"),
                  fb.pair_record("p4 .", "x .", "z .", "skip"),
                  fb.pair_record("p5 .", "cal .", "bad .", "a", calibration=True),
                  fb.pair_record("p1 .", "good .", "bad .", "a", repeat=True),
                  fb.score_record("p6 .", "c .", 4)]
    path = P.write_trl_preferences(tmp_path / "preferences_trl.jsonl", judgements)
    rows = load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(rows.column_names)
    assert rows.to_dict() == fb.to_preference_dataset(judgements).to_dict()
    assert rows["chosen"] == [" good .", " très bien ."]
    assert P.load_trl_preferences(path) == [p for p in P.pairs_from_judgements(judgements) if not p.tie]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["preferences_trl.jsonl"]  # no temp file left


def test_load_trl_preferences_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 04"):
        P.load_trl_preferences(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        P.load_trl_preferences(tmp_path / "empty.jsonl")
    (tmp_path / "implicit.jsonl").write_text('{"chosen": "a b", "rejected": "a c"}\n')
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'\]"):
        P.load_trl_preferences(tmp_path / "implicit.jsonl")


def test_trl_dpo_trainer_takes_the_written_file(tmp_path):
    from datasets import load_dataset
    from test_feedback import _tiny_tokenizer, trl_dpo_one_step

    rng = np.random.default_rng(0)
    words = ["great", "awful", "good", "bad"]
    judgements = [fb.pair_record(f"i saw this {rng.choice(['film', 'book'])} .", f"it was {rng.choice(words)} .",
                                 f"it was very {rng.choice(words)} .", "a" if i % 2 else "b") for i in range(8)]
    path = P.write_trl_preferences(tmp_path / "preferences_trl.jsonl", judgements)
    ds = load_dataset("json", data_files=str(path), split="train")
    tokenizer = _tiny_tokenizer(list(ds["prompt"]) + list(ds["chosen"]) + list(ds["rejected"]))
    trainer, result, _ = trl_dpo_one_step(ds, tokenizer, tmp_path / "dpo")
    assert result.global_step == 1 and result.training_loss == pytest.approx(math.log(2), abs=1e-4)
    row = trainer.train_dataset[0]
    assert tokenizer.unk_token_id not in row["prompt_ids"] + row["chosen_ids"] + row["rejected_ids"]
