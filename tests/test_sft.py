"""Supervised fine-tuning (notebook 03): the prompt mask, and that SFT learns the demonstrations.

SFT is ``lm.train_lm(..., mask_prompt=True)``: the loss is the mean negative
log-likelihood of the completion tokens and the EOS that ends them, given the prompt
(Ouyang et al. 2022, step 1; TRL's ``SFTTrainer`` with ``completion_only_loss``). These
tests check the mask on a hand-worked example, that the masked loss ignores the prompt
positions entirely (a model whose logits we control, so the gradient can be read off),
that it equals an independent computation (``continuation_logprobs``: left-padded
prompts, right-padded completions, a different code path), and that a short SFT run on
a tiny model lowers the completion NLL of the demonstrations.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf_utils import lm
from rlhf_utils.config import PRESETS, LMConfig, SFTConfig
from rlhf_utils.world import World

TEXTS = ["i loved this film . the acting was great .", "i hated this book . it was dull ."]


@pytest.fixture(scope="module")
def tok():
    return lm.train_tokenizer(TEXTS)


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


# ---------------------------------------------------------------------------------------
# The mask, worked by hand
# ---------------------------------------------------------------------------------------


def test_prompt_mask_selects_exactly_the_completion_and_eos(tok):
    examples = [("i loved this film .", "the acting was great ."), ("i hated this book .", "it was dull .")]
    input_ids, attention_mask, loss_mask = lm.lm_batch(tok, examples, mask_prompt=True)
    # row 0: <bos> i loved this film . the acting was great . <eos>       (12 tokens)
    # row 1: <bos> i hated this book . it was dull . <eos> <pad>         (11 tokens + 1 pad)
    assert tokens(tok, input_ids[0].tolist()) == (
        "<bos> i loved this film . the acting was great . <eos>".split())
    assert tokens(tok, input_ids[1].tolist()) == "<bos> i hated this book . it was dull . <eos> <pad>".split()
    assert attention_mask.tolist() == [[1] * 12, [1] * 11 + [0]]
    # loss_mask[t] says whether the prediction of input_ids[t + 1] counts: 11 targets per row
    assert loss_mask.tolist() == [[0] * 5 + [1] * 6, [0] * 5 + [1] * 5 + [0]]
    targets = [[t for t, m in zip(row[1:], mrow) if m] for row, mrow in zip(input_ids.tolist(), loss_mask.tolist())]
    assert tokens(tok, targets[0]) == "the acting was great . <eos>".split()
    assert tokens(tok, targets[1]) == "it was dull . <eos>".split()


def test_without_the_mask_every_real_token_after_bos_counts(tok):
    examples = [("i loved this film .", "the acting was great ."), ("i hated this book .", "it was dull .")]
    _, _, loss_mask = lm.lm_batch(tok, examples, mask_prompt=False)
    assert loss_mask.tolist() == [[1] * 11, [1] * 10 + [0]]


def test_an_empty_prompt_makes_the_mask_irrelevant(tok):
    examples = [("", "i loved this film ."), ("", "it was dull .")]
    masked = lm.lm_batch(tok, examples, mask_prompt=True)
    unmasked = lm.lm_batch(tok, examples, mask_prompt=False)
    for a, b in zip(masked, unmasked):
        assert torch.equal(a, b)
    assert masked[2].sum(1).tolist() == [5 + 1, 4 + 1]  # every word, and EOS


# ---------------------------------------------------------------------------------------
# The masked loss ignores the prompt positions
# ---------------------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    """A "model" whose logits are a free tensor [B, T, V], whatever the input ids."""

    def __init__(self, batch: int, length: int, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.nn.Parameter(torch.randn(batch, length, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.logits)


def naive_masked_nll(logits, input_ids, loss_mask):
    """Mean of -log softmax(logits[b, t])[input_ids[b, t + 1]] over the masked positions, by loops."""
    total, count = 0.0, 0
    for b in range(input_ids.shape[0]):
        for t in range(input_ids.shape[1] - 1):
            if loss_mask[b, t]:
                row = logits[b, t].double()
                total -= float(row[input_ids[b, t + 1]] - torch.logsumexp(row, 0))
                count += 1
    return total / count


def test_masked_loss_equals_a_naive_loop_and_has_no_gradient_at_prompt_positions(tok):
    examples = [("i loved this film .", "the acting was great ."), ("i hated this book .", "it was dull .")]
    input_ids, attention_mask, loss_mask = lm.lm_batch(tok, examples, mask_prompt=True)
    model = FixedLogits(*input_ids.shape, len(tok))
    loss = lm.lm_loss(model, input_ids, attention_mask, loss_mask)
    assert loss.item() == pytest.approx(naive_masked_nll(model.logits.detach(), input_ids, loss_mask), rel=1e-6)
    loss.backward()
    grad_per_position = model.logits.grad.abs().sum(-1)  # [B, T]
    # position t predicts token t+1: the prompt's predictions (t < 5) and padding get no gradient
    assert torch.all(grad_per_position[:, :5] == 0)
    assert torch.all(grad_per_position[:, :-1][loss_mask.bool()] > 0)
    assert torch.all(grad_per_position[:, :-1][~loss_mask.bool()] == 0)
    assert torch.all(grad_per_position[:, -1] == 0)  # the last position predicts nothing


def test_changing_the_prompt_targets_leaves_the_masked_loss_unchanged(tok):
    examples = [("i loved this film .", "the acting was great ."), ("i hated this book .", "it was dull .")]
    input_ids, attention_mask, loss_mask = lm.lm_batch(tok, examples, mask_prompt=True)
    _, _, full_mask = lm.lm_batch(tok, examples, mask_prompt=False)
    model = FixedLogits(*input_ids.shape, len(tok))  # logits independent of the inputs: only targets change
    other = input_ids.clone()
    other[:, 1:5] = torch.tensor(tok.convert_tokens_to_ids(["it", "was", "dull", "great"]))  # new prompt tokens (targets 0..3)
    with torch.no_grad():
        masked = [lm.lm_loss(model, ids, attention_mask, loss_mask).item() for ids in (input_ids, other)]
        unmasked = [lm.lm_loss(model, ids, attention_mask, full_mask).item() for ids in (input_ids, other)]
    assert masked[0] == masked[1]
    assert unmasked[0] != unmasked[1]


# ---------------------------------------------------------------------------------------
# SFT on a tiny model
# ---------------------------------------------------------------------------------------

TINY = LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=48, seed=0)


@pytest.fixture(scope="module")
def tiny_world():
    world = World(seed=0)
    tokenizer = lm.train_tokenizer(world.corpus(300, seed=0) + [" ".join(world.vocabulary())])
    return world, tokenizer


def completion_nll(model, tokenizer, pairs):
    """Mean NLL per completion token (EOS included), through ``continuation_logprobs``."""
    with torch.no_grad():
        logprobs, mask = lm.continuation_logprobs(model, tokenizer, [p for p, _ in pairs], [c for _, c in pairs])
    return float(-logprobs.sum() / mask.sum())


def test_masked_lm_loss_equals_continuation_logprobs_on_a_gpt(tiny_world):
    world, tokenizer = tiny_world
    model = lm.build_model(TINY, tokenizer).eval()
    pairs = world.demonstrations(16, seed=3)
    with torch.no_grad():
        loss = lm.lm_loss(model, *lm.lm_batch(tokenizer, pairs, mask_prompt=True)).item()
    assert loss == pytest.approx(completion_nll(model, tokenizer, pairs), rel=1e-5)


def test_sft_lowers_the_completion_nll_of_demonstrations_and_moves_every_parameter(tiny_world):
    world, tokenizer = tiny_world
    model = lm.build_model(TINY, tokenizer)
    before_params = copy.deepcopy(model.state_dict())
    train, heldout = world.demonstrations(400, seed=1), world.demonstrations(100, seed=2)
    nll_train_before = completion_nll(model.eval(), tokenizer, train[:100])
    nll_heldout_before = completion_nll(model, tokenizer, heldout)
    losses = lm.train_lm(model, tokenizer, train, steps=60, batch_size=16, learning_rate=1e-2, mask_prompt=True,
                         seed=0, progress=False)
    assert len(losses) == 60 and all(math.isfinite(x) for x in losses)
    assert not model.training  # train_lm hands the model back in eval mode
    nll_train_after = completion_nll(model, tokenizer, train[:100])
    nll_heldout_after = completion_nll(model, tokenizer, heldout)
    assert nll_train_after < nll_train_before - 1.0, (nll_train_before, nll_train_after)
    assert nll_heldout_after < nll_heldout_before - 1.0, (nll_heldout_before, nll_heldout_after)
    for name, value in model.state_dict().items():
        if name.endswith("attn.bias") or name.endswith("masked_bias"):  # causal-mask buffers, if any
            continue
        assert not torch.equal(value, before_params[name]), f"{name} did not move"


def test_the_same_seed_gives_the_same_sft_run(tiny_world):
    world, tokenizer = tiny_world
    pairs = world.demonstrations(50, seed=1)
    runs = []
    for _ in range(2):
        model = lm.build_model(TINY, tokenizer)
        runs.append(lm.train_lm(model, tokenizer, pairs, steps=5, batch_size=8, learning_rate=1e-2, mask_prompt=True,
                                seed=7, progress=False))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------


def test_sft_config_documents_every_field_and_full_is_bigger():
    import inspect

    source = inspect.getsource(SFTConfig)
    for f in dataclasses.fields(SFTConfig):
        after = source.split(f"    {f.name}:", 1)[1].split("\n", 2)[1].strip()
        assert after.startswith('"""'), f"SFTConfig.{f.name} has no docstring"
    quick, full = PRESETS["quick"].sft, PRESETS["full"].sft
    assert full.n_demonstrations > quick.n_demonstrations and full.steps >= quick.steps
    assert quick.max_new_tokens + 8 <= PRESETS["quick"].lm.n_positions
    assert full.max_new_tokens + 8 <= PRESETS["full"].lm.n_positions
