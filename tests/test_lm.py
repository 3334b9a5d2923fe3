"""Tests of rlhf_utils.lm, rlhf_utils.gpt2_fast and rlhf_utils.checkpoints, each against
an independent reference.

References: a naive loop that runs the model on each text alone (no padding, no mask,
no KV cache) and applies softmax + gather by hand; the definitions of top-k and nucleus
sets checked row by row; a model with uniform logits (perplexity = vocabulary size); the
model's own forward for the fast GPT-2 decoding step (bit for bit); a checkpoint read
back in a fresh Python process with nothing but ``transformers``. The tensor helpers
lm uses (padding, positions, log-softmax, entropy) are tested in ``tests/test_ops.py``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from rlhf_utils import checkpoints, gpt2_fast, lm, ops
from rlhf_utils.config import LMConfig
from rlhf_utils.world import World

TINY = LMConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, seed=0)
PROMPTS = ["i loved this film .", "i hated this book . the story was", "i tried this place . the food"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture(scope="module")
def tok(world):
    return lm.train_tokenizer(world.corpus(3000, seed=0))


@pytest.fixture(scope="module")
def random_model(tok):
    """An untrained tiny GPT whose weights are perturbed so its next-token distributions are far from flat."""
    model = lm.build_model(TINY, tok).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def trained(world, tok):
    """A tiny GPT trained briefly on world text (it has learned to end reviews with EOS)."""
    model = lm.build_model(TINY, tok)
    texts = world.corpus(2000, seed=1)
    held_out = world.corpus(200, seed=2)
    ppl_before = lm.perplexity(model, tok, held_out)
    losses = lm.train_lm(model, tok, [("", t) for t in texts], steps=120, batch_size=32, learning_rate=1e-2,
                         warmup_steps=10, progress=False)
    return SimpleNamespace(model=model.eval(), losses=losses, ppl_before=ppl_before,
                           ppl_after=lm.perplexity(model, tok, held_out), held_out=held_out)


def words_to_ids(tok, text: str) -> list[int]:
    """Ids by looking every word up in the vocabulary (independent of the tokenizer pipeline)."""
    vocab = tok.get_vocab()
    return [vocab.get(w, tok.unk_token_id) for w in text.split()]


@torch.no_grad()
def naive_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t+1] | ids[:t+1]) for one unpadded sequence: full forward, softmax, gather."""
    logits = model(torch.tensor([ids])).logits[0]  # [T, V]
    out = []
    for t in range(len(ids) - 1):
        p = torch.softmax(logits[t].double(), -1)
        out.append(float(torch.log(p[ids[t + 1]])))
    return out


# ---- tokenizer and model -------------------------------------------------------------


def test_tokenizer_special_tokens(tok):
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert len(ids) == 4 and None not in ids
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (lm.PAD, lm.BOS, lm.EOS, lm.UNK)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"


def test_tokenizer_word_level_round_trip(tok, world):
    for text in world.corpus(100, seed=7):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id  # BOS first, no EOS
        assert ids[1:] == words_to_ids(tok, text)  # one word = one token
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("zzz great")["input_ids"] == [tok.bos_token_id, tok.unk_token_id, tok.get_vocab()["great"]]


def test_tokenizer_covers_the_world_vocabulary(tok, world):
    vocab = tok.get_vocab()
    missing = [w for w in world.vocabulary() if w not in vocab]
    assert not missing
    assert len(tok) == len(world.vocabulary()) + 4


def test_build_model_follows_config_and_tokenizer(tok):
    model = lm.build_model(TINY, tok)
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions) == (2, 2, 32, 64)
    assert c.vocab_size == len(tok) and c.pad_token_id == tok.pad_token_id and c.eos_token_id == tok.eos_token_id
    assert lm.context_length(model) == 64
    again = lm.build_model(TINY, tok)  # the config's seed fixes the initialisation
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_encode_prompts_left_padded_with_bos(tok):
    ids, mask = lm.encode_prompts(tok, PROMPTS)
    lengths = [len(p.split()) + 1 for p in PROMPTS]
    assert ids.shape == (3, max(lengths)) and mask.shape == ids.shape
    for i, (p, n) in enumerate(zip(PROMPTS, lengths)):
        assert mask[i].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert ids[i, -n:].tolist() == [tok.bos_token_id] + words_to_ids(tok, p)
        assert (ids[i, : ids.shape[1] - n] == tok.pad_token_id).all()


# ---- log-probabilities ---------------------------------------------------------------


def test_token_logprobs_left_right_and_no_padding_agree_with_naive_loop(tok, world, random_model):
    texts = world.corpus(4, seed=3) + ["i loved this film ."]
    rows = [[tok.bos_token_id] + words_to_ids(tok, t) for t in texts]
    for pad in (ops.pad_left, ops.pad_right):
        ids, mask = pad(rows, tok.pad_token_id)
        got = lm.token_logprobs(random_model, ids, mask)  # [B, T-1]
        assert got.shape == (len(rows), ids.shape[1] - 1)
        for i, r in enumerate(rows):
            real = (mask[i, :-1] * mask[i, 1:]).bool()  # a real token predicting a real token
            expected = torch.tensor(naive_logprobs(random_model, r))
            torch.testing.assert_close(got[i][real].double(), expected.double(), atol=1e-4, rtol=0)


def test_token_logprobs_temperature_and_entropy(tok, random_model):
    ids, mask = lm.encode_prompts(tok, PROMPTS)
    lp, ent = lm.token_logprobs(random_model, ids, mask, temperature=2.0, with_entropy=True)
    with torch.no_grad():
        logits = random_model(ids, attention_mask=mask, position_ids=ops.position_ids_from_mask(mask)).logits
    logp = torch.log_softmax(logits[:, :-1].double() / 2.0, -1)
    real = mask[:, :-1].bool()  # predicted from a real token (from padding: meaningless, as documented)
    assert not real.all()  # the prompts are left-padded
    torch.testing.assert_close(lp.double()[real], logp.gather(-1, ids[:, 1:, None])[..., 0][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double()[real], -(logp.exp() * logp).sum(-1)[real], atol=1e-5, rtol=0)


def test_response_and_continuation_logprobs_match_naive_loop(tok, random_model):
    continuations = ["the acting was great .", "boring .", "the food was very good . i liked the staff ."]
    prompt_ids, prompt_mask = lm.encode_prompts(tok, PROMPTS)
    response_ids, response_mask = lm.encode_responses(tok, continuations)
    got = lm.response_logprobs(random_model, prompt_ids, prompt_mask, response_ids, response_mask)
    cont, cmask = lm.continuation_logprobs(random_model, tok, PROMPTS, continuations)
    assert got.shape == response_ids.shape == cont.shape == cmask.shape
    for i, (p, c) in enumerate(zip(PROMPTS, continuations)):
        prompt = [tok.bos_token_id] + words_to_ids(tok, p)
        response = words_to_ids(tok, c) + [tok.eos_token_id]
        expected = naive_logprobs(random_model, prompt + response)[len(prompt) - 1:]  # [len(response)]
        n = len(response)
        assert cmask[i].tolist() == [1] * n + [0] * (cmask.shape[1] - n)
        assert response_ids[i, :n].tolist() == response
        torch.testing.assert_close(got[i, :n].double(), torch.tensor(expected).double(), atol=1e-4, rtol=0)
        torch.testing.assert_close(cont[i, :n].double(), torch.tensor(expected).double(), atol=1e-4, rtol=0)
        assert (cont[i, n:] == 0).all()
        assert float(cont[i].detach().sum()) == pytest.approx(sum(expected), abs=1e-3)
    # without EOS, one token fewer and the same numbers
    no_eos, no_eos_mask = lm.continuation_logprobs(random_model, tok, PROMPTS, continuations, add_eos=False)
    assert (no_eos_mask.sum(1) == cmask.sum(1) - 1).all()
    torch.testing.assert_close(no_eos * no_eos_mask, cont[:, : no_eos.shape[1]] * no_eos_mask, atol=1e-5, rtol=0)


def test_response_logprobs_run_the_lm_head_on_the_response_positions_only(tok, random_model):
    """The LM head sees the R + 1 positions that predict response tokens, not the prompt's
    (``logits_to_keep``); a model whose forward lacks that argument computes every position's
    logits and gets the same numbers; a LoRA wrapper is asked about its base model."""
    from peft import LoraConfig, get_peft_model

    continuations = ["the acting was great .", "boring .", "the food was very good . i liked the staff ."]
    prompt_ids, prompt_mask = lm.encode_prompts(tok, PROMPTS)
    response_ids, response_mask = lm.encode_responses(tok, continuations)
    args = (prompt_ids, prompt_mask, response_ids, response_mask, 0.7, True)
    seen = []
    hook = random_model.get_output_embeddings().register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape))
    try:
        with torch.no_grad():
            logprobs, entropy = lm.response_logprobs(random_model, *args)
    finally:
        hook.remove()
    assert seen == [(3, response_ids.shape[1] + 1, TINY.n_embd)]

    class WithoutLogitsToKeep(torch.nn.Module):  # a causal LM of the kind before transformers had the argument
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=use_cache)

    older = WithoutLogitsToKeep(random_model)
    assert lm.takes_logits_to_keep(random_model) and not lm.takes_logits_to_keep(older)
    with torch.no_grad():
        all_logprobs, all_entropy = lm.response_logprobs(older, *args)
    real = response_mask.bool()  # at padding the values are meaningless (documented)
    # float rounding: the GPT-2 here takes gpt2_fast's padding-free forward, the wrapper the model's own
    torch.testing.assert_close(all_logprobs[real], logprobs[real], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(all_entropy[real], entropy[real], atol=1e-6, rtol=1e-6)
    peft_model = get_peft_model(copy.deepcopy(random_model), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    assert lm.takes_logits_to_keep(peft_model)


def test_batch_composition_does_not_change_logprobs(tok, random_model):
    """The same (prompt, continuation) alone or next to longer ones: same log-probs."""
    alone, m1 = lm.continuation_logprobs(random_model, tok, PROMPTS[:1], ["the plot was dull ."])
    batch, m2 = lm.continuation_logprobs(random_model, tok, PROMPTS, ["the plot was dull .", "x y z . a b c d e f .", "."])
    n = int(m1.sum())
    torch.testing.assert_close(alone[0, :n], batch[0, :n], atol=1e-5, rtol=0)


# ---- filters -------------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 30, generator=g)
    before = logits.clone()
    for k in (1, 2, 5, 29):
        out = lm.top_k_filter(logits, k)
        kept = torch.isfinite(out)
        assert (kept.sum(-1) == k).all()
        for row in range(logits.shape[0]):
            top = set(sorted(range(30), key=lambda j: -float(logits[row, j]))[:k])
            assert set(kept[row].nonzero()[:, 0].tolist()) == top
        assert torch.equal(out[kept], logits[kept])
    assert torch.equal(logits, before)  # input untouched
    for k in (0, -1, 30, 100):
        assert torch.equal(lm.top_k_filter(logits, k), logits)
    ties = lm.top_k_filter(torch.tensor([[3.0, 1.0, 3.0, 2.0]]), 1)
    assert torch.isfinite(ties).tolist() == [[True, False, True, False]]  # ties with the k-th are kept


def test_top_p_keeps_the_smallest_set_reaching_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 40, generator=g) * torch.rand(300, 1, generator=g) * 4
    before = logits.clone()
    for p in (1e-6, 0.1, 0.5, 0.9, 0.99):
        out = lm.top_p_filter(logits, p)
        kept = torch.isfinite(out)
        probs = torch.softmax(logits.double(), -1)
        for row in range(logits.shape[0]):
            order = sorted(range(40), key=lambda j: -float(probs[row, j]))
            m = int(kept[row].sum())
            assert m >= 1
            assert set(kept[row].nonzero()[:, 0].tolist()) == set(order[:m])  # the most likely m
            mass = float(probs[row, order[:m]].sum())
            assert mass >= p - 1e-6  # reaches p ...
            assert mass - float(probs[row, order[m - 1]]) < p + 1e-6  # ... and no smaller set does
        assert torch.equal(out[kept], logits[kept])
    assert torch.equal(logits, before)
    for p in (1.0, 1.5):
        assert torch.equal(lm.top_p_filter(logits, p), logits)


# ---- sampling ------------------------------------------------------------------------


def test_sample_categorical_matches_the_distribution_and_multinomial():
    """Inverse-CDF draws follow ``probs`` (zeros never drawn) and match torch.multinomial's frequencies."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0],  # zeros inside and at both ends
                          [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # a certain token
                          [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    ours = torch.stack([lm.sample_categorical(probs, g) for _ in range(n)])  # [n, 3]
    theirs = torch.multinomial(probs, n, replacement=True, generator=g).T  # [n, 3]
    for row in range(probs.shape[0]):
        p = probs[row].double()
        se = (p * (1 - p) / n).sqrt()
        for draws in (ours[:, row], theirs[:, row]):
            freq = torch.bincount(draws, minlength=6).double() / n
            assert bool((freq[p == 0] == 0).all())  # impossible tokens never drawn
            assert bool(((freq - p).abs() <= 5 * se + 1e-12).all()), (row, freq, p)


def test_sample_categorical_extreme_uniforms_land_on_possible_tokens(monkeypatch):
    """u = 0 (x = the total) picks the last possible token, not a trailing zero; u -> 1 the first
    possible one, not a leading zero."""
    probs = torch.tensor([[0.0, 0.3, 0.7, 0.0, 0.0], [0.2, 0.2, 0.0, 0.2, 0.4]])
    for u, expected in ((0.0, [2, 4]), (1 - 2**-24, [1, 0])):
        monkeypatch.setattr(lm.torch, "rand", lambda *shape, u=u, **kw: torch.full(shape, u, dtype=kw.get("dtype")))
        assert lm.sample_categorical(probs).tolist() == expected


@torch.no_grad()
def naive_greedy(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding of one prompt: a full forward pass per step, no cache, no padding."""
    ids = [tok.bos_token_id] + words_to_ids(tok, prompt)
    out = []
    for _ in range(max_new_tokens):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token == tok.eos_token_id:
            break
    return out


def check_layout(tok, s: lm.Samples):
    """response_mask: 1 up to and including the first EOS, then 0 (and <pad> ids there)."""
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for i in range(s.response_ids.shape[0]):
        ids, mask = s.response_ids[i].tolist(), s.response_mask[i].tolist()
        first = ids.index(eos) if eos in ids else None
        n = len(ids) if first is None else first + 1
        assert mask == [1] * n + [0] * (len(ids) - n)
        assert all(t == pad for t in ids[n:])
        assert bool(s.ended[i]) == (first is not None)
        words = [tok.convert_ids_to_tokens(t) for t in ids[: n - (first is not None)]]
        assert s.texts[i] == " ".join(words)  # sampled specials other than EOS stay visible
        assert (s.logprobs[i, n:] == 0).all()


def test_greedy_equals_argmax_without_cache(tok, trained, random_model):
    for model in (trained.model, random_model):
        s = lm.sample(model, tok, PROMPTS, max_new_tokens=20, greedy=True)
        check_layout(tok, s)
        for i, p in enumerate(PROMPTS):
            n = int(s.response_mask[i].sum())
            assert s.response_ids[i, :n].tolist() == naive_greedy(model, tok, p, 20)


def test_top_k_1_is_greedy(tok, random_model):
    greedy = lm.sample(random_model, tok, PROMPTS, 12, greedy=True)
    k1 = lm.sample(random_model, tok, PROMPTS, 12, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy.response_ids, k1.response_ids)


def test_sampled_layout_and_logprobs(tok, trained, world):
    prompts = world.prompts(24, seed=5)
    s = lm.sample(trained.model, tok, prompts, max_new_tokens=14, generator=torch.Generator().manual_seed(0))
    check_layout(tok, s)
    assert s.ended.any() and not s.ended.all()  # some rows end inside 14 tokens, some do not
    assert s.prompt_ids.shape == (24, 6) and s.response_ids.shape[1] <= 14
    # the recorded log-probs equal the model's log-probs of the sampled ids ...
    lp = lm.response_logprobs(trained.model, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
    torch.testing.assert_close(s.logprobs, lp * s.response_mask, atol=1e-4, rtol=0)
    # ... and an independent scoring of the decoded texts: a sampled <pad>/<bos>/<unk> stays
    # in the text as written, so every row's text re-encodes to exactly its tokens
    specials = torch.tensor([tok.pad_token_id, tok.bos_token_id, tok.unk_token_id])
    for i in range(24):
        sampled_specials = [t for t, m in zip(s.response_ids[i].tolist(), s.response_mask[i].tolist())
                            if m and t in specials.tolist()]
        assert all(tok.convert_ids_to_tokens(t) in s.texts[i].split() for t in sampled_specials)
    for ended in (True, False):
        rows = [i for i in range(24) if bool(s.ended[i]) == ended]
        lp, mask = lm.continuation_logprobs(trained.model, tok, [prompts[i] for i in rows],
                                            [s.texts[i] for i in rows], add_eos=ended)
        for j, i in enumerate(rows):
            n = int(mask[j].sum())
            assert n == int(s.response_mask[i].sum())
            torch.testing.assert_close(s.logprobs[i, :n], lp[j, :n], atol=1e-4, rtol=0)


def test_temperature_logprobs_are_of_the_scaled_distribution(tok, trained):
    s = lm.sample(trained.model, tok, PROMPTS, 10, temperature=0.7, generator=torch.Generator().manual_seed(3))
    lp = lm.response_logprobs(trained.model, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask,
                              temperature=0.7)
    torch.testing.assert_close(s.logprobs, lp * s.response_mask, atol=1e-4, rtol=0)


def test_same_generator_seed_same_samples(tok, random_model):
    a = lm.sample(random_model, tok, PROMPTS * 4, 10, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = lm.sample(random_model, tok, PROMPTS * 4, 10, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = lm.sample(random_model, tok, PROMPTS * 4, 10, top_p=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)


def needs_fast_decoder():
    """The fast decoder is only switched on for the transformers releases it was checked on."""
    import transformers

    if transformers.__version__ not in gpt2_fast.TESTED_TRANSFORMERS:
        pytest.skip(f"transformers {transformers.__version__} is not in gpt2_fast.TESTED_TRANSFORMERS "
                    f"{gpt2_fast.TESTED_TRANSFORMERS}, so lm.sample takes the model's own forward; add the "
                    "release there and run these tests to check the decoder on it")


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_fast_gpt2_decoding_equals_the_hugging_face_forward(tok, trained, world, monkeypatch, activation):
    """The GPT-2 decoder gives the model's own forward's numbers bit for bit: tokens,
    log-probabilities and hidden states, with prompts of several lengths and rows ending early."""
    from transformers import GPT2LMHeadModel

    config = trained.model.config.to_dict() | {"activation_function": activation}
    model = GPT2LMHeadModel(type(trained.model.config).from_dict(config)).eval()
    model.load_state_dict(trained.model.state_dict())
    prompts = world.prompts(24, seed=9) + ["", "the food was"]
    needs_fast_decoder()
    assert gpt2_fast.supports(model)

    def run():
        return lm.sample(model, tok, prompts, 30, temperature=1.2, generator=torch.Generator().manual_seed(0),
                         with_hidden=True)

    fast = run()
    monkeypatch.setattr(gpt2_fast, "supports", lambda m: False)
    slow = run()
    assert len(set(fast.response_mask.sum(1).tolist())) > 3  # rows ended at different steps
    assert fast.hidden.shape == (len(prompts), fast.response_ids.shape[1], model.config.n_embd)
    for name in ("response_ids", "response_mask", "logprobs", "hidden"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.texts == slow.texts


def test_fast_gpt2_decoding_only_for_a_plain_gpt2_in_eval_mode(tok, trained):
    """Training mode (dropout), another attention kernel or LoRA layers go through the model's own forward."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    needs_fast_decoder()
    model = copy.deepcopy(trained.model)
    assert gpt2_fast.supports(model)
    assert not gpt2_fast.supports(model.train())
    eager = GPT2LMHeadModel._from_config(model.config, attn_implementation="eager").eval()
    assert not gpt2_fast.supports(eager)
    peft_model = get_peft_model(copy.deepcopy(trained.model), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    assert not gpt2_fast.supports(peft_model) and not gpt2_fast.supports(peft_model.get_base_model().eval())


@torch.no_grad()
def test_gpt2_fast_steps_equal_the_model_forward_bit_for_bit(tok, trained, world):
    """Step by step, GPT2Decoder's logits and hidden states equal those of the model's own
    forward with its KV cache (lm's fall-back decoder), bit for bit -- rows of several prompt
    lengths (one only BOS), two of them ending (masked out) half-way."""
    needs_fast_decoder()
    model = trained.model
    prompt_ids, prompt_mask = lm.encode_prompts(tok, world.prompts(6, seed=4) + [""])
    batch, steps = prompt_ids.shape[0], 8
    slow = lm._Decoder(model, with_hidden=True)
    slow_logits, slow_hidden = slow.prefill(prompt_ids, prompt_mask)
    prefill = lm._Decoder(model, with_hidden=True)
    logits, hidden = prefill.prefill(prompt_ids, prompt_mask)
    assert torch.equal(logits, slow_logits) and torch.equal(hidden, slow_hidden)
    fast = gpt2_fast.GPT2Decoder(model, prefill.cache, prompt_mask, steps, with_hidden=True)
    g = torch.Generator().manual_seed(0)
    alive = torch.ones(batch, dtype=torch.bool)
    for step in range(steps):
        if step == 3:
            alive[1] = alive[-1] = False
        token = torch.randint(len(tok), (batch,), generator=g).masked_fill(~alive, tok.pad_token_id)
        (a_logits, a_hidden), (b_logits, b_hidden) = slow.step(token, alive), fast.step(token, alive)
        assert a_logits.shape == (batch, len(tok)) and a_hidden.shape == (batch, model.config.n_embd)
        assert torch.equal(a_logits, b_logits), step
        assert torch.equal(a_hidden, b_hidden), step


@pytest.mark.parametrize("switch", ["RLHF_FAST_GPT2=0", "untested transformers"])
def test_gpt2_fast_falls_back_to_the_model_forward(tok, trained, world, monkeypatch, switch):
    """With RLHF_FAST_GPT2=0, or on a transformers release the decoder was not checked on,
    supports() is False and lm.sample never builds a GPT2Decoder -- with the same samples."""
    needs_fast_decoder()
    model = trained.model
    prompts = world.prompts(8, seed=13)

    def run():
        return lm.sample(model, tok, prompts, 20, generator=torch.Generator().manual_seed(0), with_hidden=True)

    monkeypatch.setenv("RLHF_FAST_GPT2", "1")
    assert gpt2_fast.supports(model)
    fast = run()
    if switch == "RLHF_FAST_GPT2=0":
        monkeypatch.setenv("RLHF_FAST_GPT2", "0")
    else:
        monkeypatch.setattr(gpt2_fast, "TESTED_TRANSFORMERS", ("0.0.1",))
    assert not gpt2_fast.supports(model)

    def refuse(*args, **kwargs):
        raise AssertionError("lm.sample used the fast decoder although supports() is False")

    monkeypatch.setattr(gpt2_fast, "GPT2Decoder", refuse)
    slow = run()
    for name in ("response_ids", "response_mask", "logprobs", "hidden"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.texts == slow.texts


def _padded_batch(tok, world):
    """Left-padded prompts (one only BOS) followed by right-padded continuations of several lengths."""
    prompt_ids, prompt_mask = lm.encode_prompts(tok, world.prompts(5, seed=21) + [""])
    completions = ["the acting was great .", "boring .", "", "the food was very good . i liked the staff .",
                   "i would go again", "no ."]
    response_ids, response_mask = lm.encode_responses(tok, completions)
    ids, mask = torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1)
    assert not mask[:, 0].all() and not mask[:, -1].all()  # padding on the left and on the right
    return ids, mask, prompt_ids.shape[1]


def test_padding_free_forward_equals_the_model_at_every_real_token_and_in_its_gradients(tok, world, random_model):
    """padding_free_hidden_state computes the per-token work on the real tokens only and attention on
    left-aligned rows; at every real token its hidden state is the model's own (float rounding:
    the products have other shapes), 0 at padding, and the gradients it gives the weights equal
    the model's own forward's."""
    needs_fast_decoder()
    model = copy.deepcopy(random_model)
    ids, mask, _ = _padded_batch(tok, world)
    real = mask.bool()
    weights = torch.randn(ids.shape + (model.config.n_embd,), generator=torch.Generator().manual_seed(0))

    def hidden_and_grads(fast: bool):
        model.zero_grad(set_to_none=True)
        if fast:
            hidden = gpt2_fast.padding_free_hidden_state(model, ids, mask)
        else:
            hidden = model.transformer(input_ids=ids, attention_mask=mask, use_cache=False,
                                       position_ids=ops.position_ids_from_mask(mask)).last_hidden_state
        (hidden * weights * real[..., None]).sum().backward()
        return hidden.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (fast, fast_grads), (slow, slow_grads) = hidden_and_grads(True), hidden_and_grads(False)
    assert fast.shape == slow.shape == ids.shape + (model.config.n_embd,)
    torch.testing.assert_close(fast[real], slow[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(fast[~real], torch.zeros_like(fast[~real]))
    assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) == len(list(model.parameters()))
    for name, grad in slow_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("switch", ["RLHF_FAST_GPT2=0", "torch.compile", "training mode"])
def test_padding_free_forward_falls_back_to_the_model_forward(tok, world, random_model, monkeypatch, switch):
    """token_logprobs and the policy-with-value-head forward take padding_free_hidden_state for a plain
    GPT-2 in eval mode, and the model's own forward when it is switched off, while torch.compile
    traces, or in training mode -- with the same log-probabilities and values at the real tokens."""
    from rlhf_utils.value_head import PolicyWithValueHead

    needs_fast_decoder()
    policy = PolicyWithValueHead(copy.deepcopy(random_model)).eval()
    torch.nn.init.normal_(policy.v_head.weight, generator=torch.Generator().manual_seed(0))
    ids, mask, prompt_length = _padded_batch(tok, world)
    start = prompt_length - 1  # the last prompt token: the policy's outputs are for the responses

    @torch.no_grad()
    def outputs():
        return lm.token_logprobs(policy.lm, ids, mask), *policy(ids, mask, start)

    calls = []
    monkeypatch.setattr(gpt2_fast, "padding_free_hidden_state",
                        lambda *a, f=gpt2_fast.padding_free_hidden_state: calls.append(1) or f(*a))
    fast = outputs()
    assert len(calls) == 2
    if switch == "RLHF_FAST_GPT2=0":
        monkeypatch.setenv("RLHF_FAST_GPT2", "0")
    elif switch == "torch.compile":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    else:
        for m in policy.train().modules():  # training mode, its dropout at p = 0 (the same numbers)
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    assert not gpt2_fast.supports(policy.lm)
    slow = outputs()
    assert len(calls) == 2  # not called again
    real = mask[:, :-1].bool()  # the outputs read at a real token
    torch.testing.assert_close(fast[0][real], slow[0][real], atol=1e-5, rtol=0)
    for f, s in zip(fast[1:], slow[1:]):
        torch.testing.assert_close(f[real[:, start:]], s[real[:, start:]], atol=1e-5, rtol=1e-5)


def test_sample_bad_arguments(tok, random_model):
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            lm.sample(random_model, tok, PROMPTS, 5, temperature=t)
    with pytest.raises(ValueError, match="context"):
        lm.sample(random_model, tok, PROMPTS, max_new_tokens=60)  # 9-token prompts + 60 > 64
    lm.sample(random_model, tok, PROMPTS, max_new_tokens=64 - 9, greedy=True)  # just fits


# ---- training and perplexity ---------------------------------------------------------


class UniformLM(torch.nn.Module):
    """A 'model' whose logits are all zero: every token has probability 1/V."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab_size))


def test_perplexity_of_uniform_model_is_vocabulary_size(tok, world):
    assert lm.perplexity(UniformLM(len(tok)), tok, world.corpus(50, seed=4), batch_size=16) == pytest.approx(len(tok))


def test_perplexity_matches_naive_loop(tok, trained):
    texts = trained.held_out[:20]
    nll, count = 0.0, 0
    for t in texts:
        lps = naive_logprobs(trained.model, [tok.bos_token_id] + words_to_ids(tok, t) + [tok.eos_token_id])
        nll -= sum(lps)
        count += len(lps)
    assert lm.perplexity(trained.model, tok, texts, batch_size=7) == pytest.approx(torch.tensor(nll / count).exp().item(), rel=1e-4)


def test_train_lm_lowers_the_loss(tok, trained, world):
    losses = trained.losses
    assert len(losses) == 120 and all(map(lambda x: x == x, losses))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    assert trained.ppl_after < 0.5 * trained.ppl_before
    # the world's own entropy rate is a floor no model beats by much on held-out text
    assert trained.ppl_after > 0.9 * torch.tensor(world.entropy_per_token()).exp().item()


def test_lm_batch_prompt_mask_by_hand(tok):
    examples = [("i loved this film .", "the acting was great ."), ("i hated this book .", "dull .")]
    ids, attn, loss_mask = lm.lm_batch(tok, examples, mask_prompt=True)
    # row 0: <bos> i loved this film . the acting was great . <eos>   (12 tokens, 11 predictions)
    assert ids[0].tolist() == [tok.bos_token_id] + words_to_ids(tok, " ".join(examples[0])) + [tok.eos_token_id]
    assert loss_mask[0].tolist() == [0] * 5 + [1] * 6  # predictions of "the acting was great . <eos>"
    # row 1: <bos> i hated this book . dull . <eos> <pad> <pad> <pad>
    assert attn[1].tolist() == [1] * 9 + [0] * 3
    assert loss_mask[1].tolist() == [0] * 5 + [1] * 3 + [0] * 3
    _, _, full = lm.lm_batch(tok, examples, mask_prompt=False)
    assert full[0].tolist() == [1] * 11 and full[1].tolist() == [1] * 8 + [0] * 3


def test_masked_lm_loss_by_hand(tok, random_model):
    examples = [("i loved this film .", "the acting was great ."), ("i hated this book .", "dull .")]
    batch = lm.lm_batch(tok, examples, mask_prompt=True)
    total, count = 0.0, 0
    for p, c in examples:
        prompt = [tok.bos_token_id] + words_to_ids(tok, p)
        lps = naive_logprobs(random_model, prompt + words_to_ids(tok, c) + [tok.eos_token_id])[len(prompt) - 1:]
        total -= sum(lps)
        count += len(lps)
    with torch.no_grad():
        assert float(lm.lm_loss(random_model, *batch)) == pytest.approx(total / count, abs=1e-4)


def test_cosine_lr_by_hand():
    # warm-up over 2 steps to 1.0, then a cosine from 1.0 (step 2) to floor 0.1 (step 10)
    got = [lm.cosine_lr(step, 10, 1.0, warmup_steps=2, floor=0.1) for step in (0, 1, 2, 6, 10)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5, 0.1])
    assert lm.cosine_lr(0, 4, 3e-4) == pytest.approx(3e-4)  # no warm-up: starts at the peak


def test_adamw_decays_matrices_only(tok):
    model = lm.build_model(TINY, tok)
    opt = lm.adamw(model, learning_rate=1e-3, weight_decay=0.1)
    decayed, plain = opt.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"], decayed["lr"]) == (0.1, 0.0, 1e-3)
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_train_lm_needs_examples(tok):
    with pytest.raises(ValueError):
        lm.train_lm(lm.build_model(TINY, tok), tok, [], steps=1, batch_size=1, learning_rate=1e-3, progress=False)


# ---- checkpoints ---------------------------------------------------------------------

FRESH_PROCESS = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
out = []
with torch.no_grad():
    for p in prompts:
        ids = tok(p)["input_ids"]
        new = []
        for _ in range(20):
            t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(t); new.append(t)
            if t == tok.eos_token_id:
                break
        out.append(tok.decode([t for t in new if t != tok.eos_token_id], skip_special_tokens=True))
print(json.dumps({"texts": out, "vocab": len(tok), "pad": tok.pad_token_id, "eos": tok.eos_token_id}))
"""


def test_checkpoint_round_trip_in_a_fresh_process(tok, trained, tmp_path):
    path = checkpoints.save_checkpoint(trained.model, tok, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind
    greedy = lm.sample(trained.model, tok, PROMPTS, 20, greedy=True)
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), json.dumps(PROMPTS)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["texts"] == greedy.texts
    assert (fresh["vocab"], fresh["pad"], fresh["eos"]) == (len(tok), tok.pad_token_id, tok.eos_token_id)
    # and through load_checkpoint: same weights, same tokenizer, left padding
    model, tok2 = checkpoints.load_checkpoint(path, device="cpu")
    assert tok2.get_vocab() == tok.get_vocab() and tok2.padding_side == "left"
    # the tokenizer is saved with the model's context as its length, the caller's left as it was
    assert tok2.model_max_length == lm.context_length(trained.model) == 64 and tok.model_max_length == 10_000
    state = trained.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert lm.sample(model, tok2, PROMPTS, 20, greedy=True).texts == greedy.texts
    # saving again over it replaces it
    checkpoints.save_checkpoint(trained.model, tok, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_incomplete_checkpoints_say_what_is_missing(tok, random_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        checkpoints.load_checkpoint(tmp_path / "nowhere", device="cpu")
    for missing in ("tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json"):
        path = checkpoints.save_checkpoint(random_model, tok, tmp_path / missing.replace(".", "_"))
        (path / missing).unlink()
        with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
            checkpoints.load_checkpoint(path, device="cpu")
