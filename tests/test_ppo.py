"""PPO for language models (rlhf_utils.ppo) and its reward shaping (rlhf_utils.reward_shaping):
each piece against a naive reference, then the trainer on tiny models (GPT-2 and Llama
style, full and LoRA), resume (rlhf_utils.ppo_checkpoint), the command line
(rlhf_utils.ppo_cli), and bad inputs. The losses and GAE are tested in tests/test_rl.py,
the masked statistics and KL estimators in tests/test_ops.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rlhf_utils import checkpoints, lm
from rlhf_utils.config import LMConfig, PPOConfig
from rlhf_utils.ops import last_token_index
from rlhf_utils.ppo import NonFiniteError, PPOTrainer
from rlhf_utils.reward_shaping import (AdaptiveKLController, FixedKLController, apply_missing_eos_penalty,
                                       kl_penalty_rewards)
from rlhf_utils.world import World

torch.set_num_threads(1)


def prefix_mask(lengths, width):
    """[B, width] mask with the first lengths[b] entries of row b set (a response mask)."""
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()


# --------------------------------------------------------------------------------------
# Reward shaping against hand-worked values
# --------------------------------------------------------------------------------------


def test_kl_penalty_sits_on_response_tokens_and_reward_on_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.7, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -4.0], [-0.1, -0.2, -3.0, -3.0]])
    m = prefix_mask([3, 2], 4)  # row 0: EOS at t=2; row 1: EOS at t=1, then padding
    scores = torch.tensor([10.0, -20.0])
    rewards, non_score = kl_penalty_rewards(scores, logprobs, ref, m, kl_coef=0.5)
    # by hand: -0.5 * (logp - ref) on real tokens, 0 on padding; score added at the EOS
    expected_ns = torch.tensor([[-0.25, 0.5, 0.0, 0.0], [0.1, 0.25, 0.0, 0.0]])
    assert torch.allclose(non_score, expected_ns)
    expected = expected_ns.clone()
    expected[0, 2] += 10.0
    expected[1, 1] += -20.0
    assert torch.allclose(rewards, expected)
    # no EOS (full length): the score lands on the last token
    full = prefix_mask([4, 4], 4)
    r, _ = kl_penalty_rewards(scores, logprobs, ref, full, kl_coef=0.0)
    assert r[:, :3].abs().sum() == 0 and r[:, 3].tolist() == [10.0, -20.0]
    assert last_token_index(m).tolist() == [2, 1]
    # the k3 estimator per token: expm1(x) - x with x = ref - logp, by hand for one token
    r3, ns3 = kl_penalty_rewards(scores, logprobs, ref, m, kl_coef=0.5, estimator="k3")
    x = -1.5 - (-1.0)
    assert ns3[0, 0].item() == pytest.approx(-0.5 * (math.exp(x) - 1 - x), rel=1e-6)
    assert (ns3[m.bool()] <= 0).all() and (ns3[~m.bool()] == 0).all()
    assert r3[0, 2].item() == pytest.approx(10.0 + ns3[0, 2].item())


def test_missing_eos_penalty_fires_exactly_when_no_eos():
    scores = torch.tensor([0.5, 0.5, -1.0, 2.0])
    ended = torch.tensor([True, False, True, False])
    out = apply_missing_eos_penalty(scores, ended, 3.0)
    assert out.tolist() == [0.5, -2.5, -1.0, -1.0]
    assert apply_missing_eos_penalty(scores, ended, 0.0).equal(scores)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(12.0, 64)  # error 1.0 clipped to 0.2: beta * (1 + 0.2 * 64 / 10000)
    assert math.isclose(ctl.value, 0.1 * 1.00128)
    ctl.update(4.5, 1000)  # error -0.25 clipped to -0.2
    assert math.isclose(ctl.value, 0.1 * 1.00128 * 0.98)
    ctl.update(6.6, 500)  # error 0.1
    assert math.isclose(ctl.value, 0.1 * 1.00128 * 0.98 * 1.005)
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 64)
    assert fixed.value == 0.3
    state = ctl.state_dict()
    other = AdaptiveKLController(1.0, 6.0, 10_000)
    other.load_state_dict(state)
    assert other.value == ctl.value


# --------------------------------------------------------------------------------------
# The trainer on tiny models
# --------------------------------------------------------------------------------------

WORLD = World(0)


@pytest.fixture(scope="module")
def tokenizer():
    return lm.train_tokenizer(WORLD.corpus(500, seed=11))


def tiny_gpt2(tokenizer, seed=0):
    return lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32, seed=seed), tokenizer)


def _tiny_decoder(tokenizer, config_name, model_name, seed=0):
    """A one-layer Llama-style decoder from ``transformers`` (grouped-query attention, RoPE)."""
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config_name)(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return getattr(transformers, model_name)(cfg)


def tiny_llama(tokenizer, seed=0):
    return _tiny_decoder(tokenizer, "LlamaConfig", "LlamaForCausalLM", seed)


def tiny_qwen2(tokenizer, seed=0):
    return _tiny_decoder(tokenizer, "Qwen2Config", "Qwen2ForCausalLM", seed)


def gold_fn(prompts, completions):
    return torch.tensor(WORLD.gold_rewards(completions, prompts), dtype=torch.float32)


PROMPTS = WORLD.prompts(40, seed=12)
TINY = PPOConfig(steps=3, batch_size=8, num_minibatches=2, gradient_accumulation_steps=2, update_epochs=2,
                 max_new_tokens=10, learning_rate=1e-3)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_rollout_masks_logprobs_and_scores(tokenizer, build):
    """GPT-2 samples through lm's own decoder, Llama through its forward: both record the same
    log-probabilities and values a full forward pass gives."""
    t = PPOTrainer(build(tokenizer), tokenizer, gold_fn, PROMPTS, TINY)
    ro = t.rollout(PROMPTS[:8])
    m = ro.response_mask
    eos = tokenizer.eos_token_id
    for b in range(8):
        ids = ro.response_ids[b].tolist()
        n = int(m[b].sum())
        assert m[b, :n].all() and not m[b, n:].any()  # a prefix
        if ro.ended[b]:
            assert ids.index(eos) == n - 1  # mask ends exactly at the first EOS
        else:
            assert eos not in ids[:n] and n == TINY.max_new_tokens
    assert (ro.logprobs[m == 0] == 0).all() and (ro.ref_logprobs[m == 0] == 0).all()
    # the sampler's log-probs (reused) equal a fresh full forward pass; policy == ref at start
    full = lm.response_logprobs(t.policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, m) * m
    assert torch.allclose(ro.logprobs, full, atol=1e-5)
    assert torch.allclose(ro.ref_logprobs, full, atol=1e-5)
    expected = gold_fn(ro.prompts, ro.texts) - TINY.missing_eos_penalty * (~ro.ended).float()
    assert torch.allclose(ro.scores, expected)
    assert (ro.values == 0).all()  # zero-initialised value head
    # with a trained-looking head, the values taken from the sampler's own steps (no second
    # pass) equal those of a full forward pass
    with torch.no_grad():
        t.value_head.weight.normal_(generator=torch.Generator().manual_seed(0))
        t.value_head.bias.fill_(0.3)
    ro = t.rollout(PROMPTS[8:16])
    ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
    am = torch.cat([ro.prompt_mask, ro.response_mask], 1)
    with torch.no_grad():
        _, full_values = t.accelerator.unwrap_model(t.model)(ids, am, ro.prompt_ids.shape[1] - 1)
    assert (ro.values != 0).any() and torch.allclose(ro.values, full_values * ro.response_mask, atol=1e-5)


def test_advantages_are_kl_shaped_gae_then_whitened(tokenizer):
    """PPOTrainer.advantages against a naive loop: per-token -beta * (log pi - log pi_ref), the
    score on the last real token, GAE over the real tokens, whitening over the batch
    (Bessel-corrected); the returns are those of the advantages before whitening."""
    t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, TINY)
    ro = t.rollout(PROMPTS[:8])
    m = ro.response_mask.float()
    g = torch.Generator().manual_seed(0)
    ro.ref_logprobs = (ro.logprobs - 0.3 * torch.rand(m.shape, generator=g)) * m  # a policy that has moved
    ro.values = torch.randn(m.shape, generator=g) * m
    t.kl_ctl.value = beta = 0.2
    before = {k: v.clone() for k, v in vars(ro).items() if isinstance(v, torch.Tensor)}
    adv, ret, non_score = t.advantages(ro)
    gamma, lam = TINY.gamma, TINY.gae_lambda
    B, R = m.shape
    n_adv, n_ret, n_ns = np.zeros((B, R)), np.zeros((B, R)), np.zeros((B, R))
    for b in range(B):
        L = int(m[b].sum())
        lp, ref, v = ro.logprobs[b].tolist(), ro.ref_logprobs[b].tolist(), ro.values[b].tolist()
        rewards = [-beta * (lp[i] - ref[i]) for i in range(L)]
        n_ns[b, :L] = rewards
        rewards[L - 1] += float(ro.scores[b])
        A = 0.0
        for i in reversed(range(L)):
            delta = rewards[i] + gamma * (v[i + 1] if i + 1 < L else 0.0) - v[i]
            A = delta + gamma * lam * A
            n_adv[b, i], n_ret[b, i] = A, A + v[i]
    real = n_adv[m.bool().numpy()]
    white = (n_adv - real.mean()) / math.sqrt(real.var(ddof=1) + 1e-8) * m.numpy()
    assert np.allclose(non_score.numpy(), n_ns, atol=1e-6)
    assert np.allclose(ret.numpy(), n_ret, atol=1e-5)
    assert np.allclose(adv.numpy(), white, atol=1e-5)
    assert all(torch.equal(v, getattr(ro, k)) for k, v in before.items())  # the rollout is untouched
    # Rollout.select picks rows, in the order asked for
    sub = ro.select([2, 0])
    assert sub.prompts == [ro.prompts[2], ro.prompts[0]] and sub.texts == [ro.texts[2], ro.texts[0]]
    assert len(sub) == 2 and torch.equal(sub.response_ids, ro.response_ids[[2, 0]])


def test_bf16_autocast_recomputes_logprobs_so_the_first_ratio_is_one(tokenizer):
    """The GPU path (bf16 autocast), run on the CPU: the rollout recomputes log-probs and values
    in one full pass under autocast, so the first minibatch's ratio is exactly 1."""
    from accelerate import Accelerator

    config = dataclasses.replace(TINY, batch_size=8, num_minibatches=1, gradient_accumulation_steps=1, update_epochs=1)
    t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, config,
                   accelerator=Accelerator(cpu=True, mixed_precision="bf16"))
    assert t.accelerator.mixed_precision == "bf16"
    before = _params(t.accelerator.unwrap_model(t.model))
    stats = t.step()
    assert stats["policy/approx_kl"] == 0 and stats["policy/clipfrac"] == 0
    after = _params(t.accelerator.unwrap_model(t.model))
    assert all(torch.isfinite(p).all() for p in after.values())
    assert not [n for n in before if torch.equal(before[n], after[n])]


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_qwen2], ids=["gpt2", "llama", "qwen2"])
def test_one_step_moves_every_trainable_parameter_and_never_the_reference(tokenizer, build):
    t = PPOTrainer(build(tokenizer), tokenizer, gold_fn, PROMPTS, TINY)
    before = _params(t.accelerator.unwrap_model(t.model))
    ref_before = _params(t.ref_policy)
    stats = t.step()
    after = _params(t.accelerator.unwrap_model(t.model))
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not move: {unchanged}"
    assert all(torch.equal(ref_before[n], p) for n, p in _params(t.ref_policy).items())
    for key in ("objective/kl", "objective/scores", "policy/approx_kl", "policy/clipfrac", "policy/entropy",
                "loss/value", "loss/policy", "val/clipfrac", "val/explained_variance", "objective/kl_coef",
                "charts/learning_rate"):
        assert key in stats and math.isfinite(stats[key]), key


def test_lora_trains_adapters_and_value_head_only(tokenizer):
    pytest.importorskip("peft")
    base = tiny_llama(tokenizer)
    frozen = _params(base)
    t = PPOTrainer(base, tokenizer, gold_fn, PROMPTS, dataclasses.replace(TINY, lora_r=4))
    model = t.accelerator.unwrap_model(t.model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("v_head") for n in trainable)
    before = _params(model)
    t.step()
    after = _params(model)
    for n in before:
        assert torch.equal(before[n], after[n]) != (n in trainable), n
    # the reference (adapters off) is still the original model
    ro = t.rollout(PROMPTS[:4])
    orig = tiny_llama(tokenizer)
    orig.load_state_dict({k.replace("base_layer.", ""): v for k, v in frozen.items()}, strict=False)
    expect = lm.response_logprobs(orig, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    assert torch.allclose(ro.ref_logprobs, expect * ro.response_mask, atol=1e-5)


def test_reward_model_is_accepted_and_a_foreign_tokenizer_refused(tokenizer):
    from rlhf_utils.reward import RewardModel

    policy = tiny_gpt2(tokenizer)
    rm = RewardModel.from_policy(policy, tokenizer)
    t = PPOTrainer(policy, tokenizer, rm, PROMPTS, TINY)
    ro = t.rollout(PROMPTS[:4])
    assert torch.allclose(ro.scores + TINY.missing_eos_penalty * (~ro.ended).float(),
                          rm.score(ro.prompts, ro.texts), atol=1e-5)
    other_tok = lm.train_tokenizer(["completely different words here ."])
    other = RewardModel.from_policy(lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32),
                                                   other_tok), other_tok)
    with pytest.raises(ValueError, match="different tokenizers"):
        PPOTrainer(tiny_gpt2(tokenizer), tokenizer, other, PROMPTS, TINY)


def test_resume_after_a_kill_equals_the_unbroken_run(tokenizer, tmp_path):
    cfg = dataclasses.replace(TINY, steps=3)
    unbroken = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, cfg)
    unbroken.train(progress=False)

    class Killed(Exception):
        pass

    def kill_at_2(stats):
        if stats["step"] == 2:
            raise Killed

    first = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, cfg)
    with pytest.raises(Killed):
        first.train(progress=False, save_dir=tmp_path / "run", save_every=1, callback=kill_at_2)
    resumed = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, cfg).load_state(tmp_path / "run")
    assert resumed.step_count == 2
    resumed.train(progress=False)
    a = _params(unbroken.accelerator.unwrap_model(unbroken.model))
    b = _params(resumed.accelerator.unwrap_model(resumed.model))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.kl_ctl.value == unbroken.kl_ctl.value
    assert [h["objective/scores"] for h in resumed.history] == [h["objective/scores"] for h in unbroken.history]


def test_save_policy_is_a_loadable_checkpoint(tokenizer, tmp_path):
    t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, TINY)
    t.step()
    t.save_policy(tmp_path / "ppo")
    model, tok = checkpoints.load_checkpoint(tmp_path / "ppo", device="cpu")
    for (n, p), q in zip(t.policy.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n
    assert (tmp_path / "ppo" / "value_head.safetensors").is_file()


# --------------------------------------------------------------------------------------
# Bad input: clear errors that name the fix
# --------------------------------------------------------------------------------------


def test_minibatch_that_does_not_divide_the_batch(tokenizer):
    with pytest.raises(ValueError, match=r"num_minibatches=3 does not divide batch_size=8.*Pick one of \[1, 2, 4, 8\]"):
        PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, dataclasses.replace(TINY, num_minibatches=3))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS,
                   dataclasses.replace(TINY, gradient_accumulation_steps=3))


def test_prompt_longer_than_the_context(tokenizer):
    long_prompt = " ".join(["i loved this film ."] * 6)  # 31 tokens with BOS
    with pytest.raises(ValueError, match=r"exceeds the policy's context of 32 tokens.*lower max_new_tokens"):
        PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS + [long_prompt], TINY)


def test_resume_from_another_configuration(tokenizer, tmp_path):
    t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, TINY)
    t.step()
    t.save_state(tmp_path / "ck")
    other = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, dataclasses.replace(TINY, learning_rate=5e-4))
    with pytest.raises(ValueError, match=r"another configuration \(learning_rate: saved 0.001, now 0.0005\)"):
        other.load_state(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="not a complete PPO checkpoint"):
        other.load_state(tmp_path / "nothing")


def test_cuda_without_cuda(tokenizer):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="device='cpu'"):
        PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, TINY, device="cuda")


def test_nan_reward_stops_with_the_step_and_the_quantity(tokenizer):
    def nan_after_first(prompts, completions):
        s = gold_fn(prompts, completions)
        return s if t.step_count == 0 else s * float("nan")

    t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, nan_after_first, PROMPTS, TINY)
    t.step()
    with pytest.raises(NonFiniteError, match="PPO step 2: scores is not finite"):
        t.step()


def test_command_line_trains_saves_and_resumes(tokenizer, tmp_path, capsys):
    from rlhf_utils.ppo_checkpoint import STATE_FILE
    from rlhf_utils.ppo_cli import main

    policy = lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64), tokenizer)
    checkpoints.save_checkpoint(policy, tokenizer, tmp_path / "sft")
    args = ["--scale", "quick", "--policy", str(tmp_path / "sft"), "--reward", "gold", "--out", str(tmp_path / "ppo"),
            "--save-every", "1", "--device", "cpu"]
    main(args + ["--steps", "1"])
    assert "1 PPO steps on 1 process(es)" in capsys.readouterr().out
    checkpoints.load_checkpoint(tmp_path / "ppo", device="cpu")  # a complete Hugging Face folder
    main(args + ["--steps", "2", "--resume"])  # carries on from step 1
    import json

    state = json.loads((tmp_path / "ppo-state" / STATE_FILE).read_text())
    assert state["step"] == 2 and len(state["history"]) == 2


def test_command_line_compile_flag_compiles_the_update(tokenizer, tmp_path, monkeypatch, capsys):
    from rlhf_utils.ppo_cli import main

    compiled = []

    def recording_compile(model, **kwargs):  # stands in for torch.compile: records, then runs uncompiled
        compiled.append(kwargs)
        return lambda *args: model(*args)

    monkeypatch.setattr(torch, "compile", recording_compile)
    policy = lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64), tokenizer)
    checkpoints.save_checkpoint(policy, tokenizer, tmp_path / "sft")
    main(["--scale", "quick", "--policy", str(tmp_path / "sft"), "--reward", "gold", "--out", str(tmp_path / "ppo"),
          "--save-every", "0", "--device", "cpu", "--steps", "1", "--compile"])
    assert compiled == [{"dynamic": True}]
    assert "1 PPO steps on 1 process(es)" in capsys.readouterr().out


def test_python_m_rlhf_utils_ppo_is_still_the_command_line(monkeypatch, capsys):
    """``python -m rlhf_utils.ppo`` runs rlhf_utils.ppo_cli.main (here in-process, with --help)."""
    import runpy
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", ["python -m rlhf_utils.ppo", "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module("rlhf_utils.ppo", run_name="__main__")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m rlhf_utils.ppo" in out and "--resume" in out and "--lora-r" in out


def _plain_update(model, optimizer, ro, advantages, returns, config, generator):
    """The PPO update written plainly, as a reference: every minibatch on the full padded batch,
    one forward per gradient-accumulation chunk, the rl losses, clipping, Adam."""
    from rlhf_utils.ops import selective_log_softmax
    from rlhf_utils.rl import ppo_policy_loss, ppo_value_loss

    input_ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
    attention_mask = torch.cat([ro.prompt_mask, ro.response_mask], 1)
    start, mask = ro.prompt_ids.shape[1] - 1, ro.response_mask.float()
    mini = config.batch_size // config.num_minibatches
    micro = mini // config.gradient_accumulation_steps
    for _ in range(config.update_epochs):
        order = torch.randperm(len(ro), generator=generator)
        for lo in range(0, len(ro), mini):
            mb = order[lo:lo + mini]
            n_tokens = mask[mb].sum()
            optimizer.zero_grad()
            for k in range(config.gradient_accumulation_steps):
                j = mb[k * micro:(k + 1) * micro]
                logits, values = model(input_ids[j], attention_mask[j], start)
                logp = selective_log_softmax(logits.float() / config.temperature, ro.response_ids[j])
                m = mask[j]
                loss = m.sum() / n_tokens * (
                    ppo_policy_loss(logp, ro.logprobs[j], advantages[j], config.clip_coef, m)
                    + config.vf_coef * ppo_value_loss(values, ro.values[j], returns[j], config.vf_clip_coef, m))
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_update_equals_a_plain_untrimmed_reference(tokenizer, build):
    """The trainer computes each micro-batch on the columns its rows use (padding trimmed; for
    GPT-2 on its real tokens only, rlhf_utils.gpt2_fast) and takes the log-softmax once for
    log-probs and entropy; the parameters it reaches equal those of the plain update on the
    full padded batch through the model's own forward, to float tolerance."""
    import copy

    t = PPOTrainer(build(tokenizer), tokenizer, gold_fn, PROMPTS, TINY)
    ro = t.rollout(t.next_prompts())
    # responses of several lengths (a random tiny model seldom ends on its own): padding to trim
    lengths = torch.tensor([3, 10, 5, 7, 2, 9, 4, 6])[:len(ro)]
    mask = prefix_mask(lengths.tolist(), ro.response_mask.shape[1]).long()
    ro = dataclasses.replace(ro, response_mask=mask, response_ids=ro.response_ids.masked_fill(mask == 0, tokenizer.pad_token_id),
                             logprobs=ro.logprobs * mask, values=ro.values * mask, ref_logprobs=ro.ref_logprobs * mask)
    advantages, returns, _ = t.advantages(ro)
    reference = copy.deepcopy(t.accelerator.unwrap_model(t.model))
    ref_opt = torch.optim.Adam(reference.parameters(), lr=TINY.learning_rate, eps=TINY.adam_eps)
    ref_gen = torch.Generator().manual_seed(0)
    ref_gen.set_state(t.shuffle_gen.get_state())
    t.update(ro)
    with pytest.MonkeyPatch.context() as patch:  # the reference through the model's own forward
        patch.setenv("RLHF_FAST_GPT2", "0")
        _plain_update(reference, ref_opt, ro, advantages, returns, TINY, ref_gen)
    trained = dict(t.accelerator.unwrap_model(t.model).named_parameters())
    for name, p in reference.named_parameters():
        assert torch.allclose(trained[name], p, atol=2e-6, rtol=1e-5), name
    assert any(not torch.equal(p, q) for p, q in zip(reference.parameters(), build(tokenizer).parameters()))


def test_padding_free_forward_reaches_the_parameters_of_the_model_forward(tokenizer, monkeypatch):
    """Two steps through rlhf_utils.gpt2_fast's padding-free forward (the update and the
    reference pass) and two through the model's own forward (RLHF_FAST_GPT2=0), same seed:
    the same completions, the same statistics and the same parameters, to float tolerance."""
    trainers = {}
    for fast in ("1", "0"):
        monkeypatch.setenv("RLHF_FAST_GPT2", fast)
        trainers[fast] = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, dataclasses.replace(TINY, steps=2))
        trainers[fast].train(progress=False)
    fast, slow = trainers["1"], trainers["0"]
    for a, b in zip(fast.history, slow.history):
        assert a["objective/scores"] == b["objective/scores"]  # the same texts
        for key in ("objective/kl", "loss/policy", "loss/value", "policy/entropy", "policy/approx_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    trained = _params(fast.accelerator.unwrap_model(fast.model))
    for name, p in _params(slow.accelerator.unwrap_model(slow.model)).items():
        assert torch.allclose(trained[name], p, atol=1e-5, rtol=1e-4), name


@pytest.mark.needs_cxx
def test_torch_compile_reaches_the_parameters_of_the_uncompiled_update(tokenizer):
    """torch_compile=True runs the update's forward compiled (checked at the start against the
    uncompiled one); two steps reach the uncompiled trainer's parameters, same seed, to float
    tolerance -- micro-batches, no_sync and the varying widths included."""
    config = dataclasses.replace(TINY, steps=2)
    plain = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, config)
    compiled = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS,
                          dataclasses.replace(config, torch_compile=True))
    assert compiled.compiled and not plain.compiled
    assert all(p.grad is None for p in compiled.model.parameters())  # the check's gradients are not kept
    for t in (plain, compiled):
        t.train(progress=False)
    trained = _params(compiled.accelerator.unwrap_model(compiled.model))
    for name, p in _params(plain.accelerator.unwrap_model(plain.model)).items():
        assert torch.allclose(trained[name], p, atol=1e-5, rtol=1e-4), name
    assert compiled.history[-1]["objective/kl"] == pytest.approx(plain.history[-1]["objective/kl"], rel=1e-4, abs=1e-6)


@pytest.mark.needs_cxx
def test_torch_compile_under_bf16_autocast_passes_its_check_and_steps_as_the_uncompiled(tokenizer):
    """The GPU's bf16 path, run on the CPU: the start-up check passes at its bf16 tolerance, and
    one step (the rollout's full pass and the update through the compiled forward) computes
    what the uncompiled bf16 step computes, to bf16 rounding: the same completions and scores,
    the same first-update KL, losses and entropy within 1%."""
    from accelerate import Accelerator

    steps = {}
    for torch_compile in (False, True):
        t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS,
                       dataclasses.replace(TINY, steps=1, torch_compile=torch_compile),
                       accelerator=Accelerator(cpu=True, mixed_precision="bf16"))
        assert t.accelerator.mixed_precision == "bf16" and t.compiled == torch_compile
        steps[torch_compile] = t.step()
    compiled, plain = steps[True], steps[False]
    assert compiled["objective/scores"] == plain["objective/scores"]  # sampling is not compiled: the same texts
    for key in ("policy/approx_kl", "loss/policy", "loss/value", "policy/entropy"):  # seen here: within 1e-6
        assert compiled[key] == pytest.approx(plain[key], rel=1e-2, abs=1e-4), key


@pytest.mark.parametrize("failure", ["raises", "differs"])
def test_torch_compile_that_fails_or_differs_warns_and_trains_uncompiled(tokenizer, monkeypatch, failure):
    """A compiler that is missing (the compiled forward raises) or wrong (its outputs differ):
    a warning that says so, then the uncompiled forward."""
    def fake_compile(model, **kwargs):
        def forward(*args):
            if failure == "raises":
                raise RuntimeError("no working C++ compiler")
            logits, values = model(*args)
            return logits * 1.5, values
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    with pytest.warns(RuntimeWarning, match=r"torch_compile=True: compiling the policy failed or changed its "
                                            r"outputs \((RuntimeError: no working C\+\+|AssertionError).*training uncompiled"):
        t = PPOTrainer(tiny_gpt2(tokenizer), tokenizer, gold_fn, PROMPTS, dataclasses.replace(TINY, torch_compile=True))
    assert not t.compiled and t.forward is t.model
    assert math.isfinite(t.step()["loss/policy"])
