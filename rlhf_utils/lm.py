"""Language models: tokenizer, a small GPT, training, sampling, log-probabilities.

Everything the course needs from a causal language model, written once and tested:

* :func:`train_tokenizer` -- a word-level tokenizer trained with Hugging Face
  ``tokenizers`` and wrapped as a ``PreTrainedTokenizerFast`` (pad != eos);
* :func:`build_model` -- a GPT-2-style decoder (Radford et al. 2019) from a
  ``transformers`` config, sized by :class:`rlhf_utils.config.LMConfig`;
* :func:`train_lm` -- next-token training, used both for pre-training (no prompt) and
  for supervised fine-tuning (loss masked to the completion, Ouyang et al. 2022);
* :func:`sample` -- greedy / temperature / top-k / top-p sampling (Holtzman et al.
  2020) with the KV cache, left-padded prompts, and response masks exact after EOS;
* :func:`response_logprobs` -- log pi(token | prefix) of each response token, the
  quantity PPO, the KL penalty and DPO are built from.

Checkpoints (save, check, load) are :mod:`rlhf_utils.checkpoints`; the tensor helpers
(padding, positions, token log-probabilities, entropy) are :mod:`rlhf_utils.ops`.

Shapes: B = batch, P = prompt length, R = response length, T = sequence length,
V = vocabulary size.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlhf_utils import gpt2_fast
from rlhf_utils.checks import check_int, check_number, check_texts
from rlhf_utils.ops import (entropy_from_logits, masked_mean, pad_left, pad_right, position_ids_from_mask,
                            selective_log_softmax)

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


# --------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str]):
    """A word-level tokenizer for ``texts``: one word or punctuation mark = one token.

    Encoding prepends ``<bos>``; ``<eos>`` is added by whoever builds training
    sequences (and produced by the model when it ends a text). ``<pad>`` is its own
    token, distinct from ``<eos>``, so nothing mistakes padding for the end of a text.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = check_texts("texts", texts, "training texts")
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[PAD, BOS, EOS, UNK]))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=10_000,
    )


def build_model(config, tokenizer):
    """A GPT-2-style decoder sized by ``config`` (an :class:`LMConfig`), for ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_utils.config import LMConfig

    if not isinstance(config, LMConfig):  # its sizes were checked when it was built
        raise TypeError(f"config must be an LMConfig (rlhf_utils.config), got {type(config).__name__}")
    gpt_config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # the exact GELU, x * Phi(x) (Hendrycks & Gimpel 2016), one fused kernel; GPT-2's tanh
        # approximation ("gelu_new", five elementwise ops) was a quarter of this small model's
        # forward time on a CPU, and torch's fused tanh form is still 5x slower there than the exact one
        activation_function="gelu",
    )
    torch.manual_seed(config.seed)
    return GPT2LMHeadModel(gpt_config)


def context_length(model) -> int:
    """The longest sequence the model accepts (positions it has embeddings for)."""
    c = getattr(model, "config", None)
    return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None) or 10**9


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------


def check_model(model, tokenizer, fn: str) -> torch.device:
    """The device of ``model``, after checking that it is a torch model and that ``tokenizer``
    has the EOS and PAD tokens the course's batching needs."""
    if not isinstance(model, torch.nn.Module) or next(model.parameters(), None) is None:
        raise TypeError(f"{fn}: model must be a torch language model (e.g. from checkpoints.load_checkpoint), "
                        f"got {type(model).__name__}")
    if not callable(tokenizer) or getattr(tokenizer, "eos_token_id", None) is None \
            or getattr(tokenizer, "pad_token_id", None) is None:
        raise TypeError(f"{fn}: tokenizer must be a Hugging Face tokenizer with EOS and PAD tokens "
                        f"(the course's train_tokenizer, or load_checkpoint's), got {type(tokenizer).__name__}")
    return next(model.parameters()).device


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without BOS/EOS (one batched call of the fast tokenizer)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def encode_prompts(tokenizer, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as a left-padded batch starting with BOS: (input_ids [B, P], attention_mask [B, P]).

    Left padding puts every prompt's last token in the last column, so generation
    appends the next token to the same column for every row.
    """
    rows = [[tokenizer.bos_token_id] + ids for ids in _ids(tokenizer, prompts)]
    return pad_left(rows, tokenizer.pad_token_id, device)


def encode_responses(tokenizer, completions: list[str], device=None, add_eos: bool = True):
    """Completions as a right-padded batch, each ended by EOS: (ids [B, R], mask [B, R])."""
    rows = [ids + ([tokenizer.eos_token_id] if add_eos else []) for ids in _ids(tokenizer, completions)]
    return pad_right(rows, tokenizer.pad_token_id, device)


# --------------------------------------------------------------------------------------
# Log-probabilities
# --------------------------------------------------------------------------------------


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0, with_entropy: bool = False, logits_to_keep: int = 0):
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for every t: [B, T-1]; with ``logits_to_keep`` = N,
    for the last N - 1 tokens only, [B, N-1], the LM head applied to the last N positions only.

    Positions come from the mask, so left- and right-padded batches give the same
    numbers for the same text. With ``with_entropy`` also returns the entropy of each
    next-token distribution. Logits are divided by ``temperature`` (the distribution a
    policy sampled at that temperature actually followed).
    """
    if gpt2_fast.supports(model):  # the real tokens only (GPT-2's forward is lm_head(last hidden state))
        hidden = gpt2_fast.padding_free_hidden_state(model, input_ids, attention_mask)
        logits = model.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
    else:
        keep = {"logits_to_keep": logits_to_keep} if logits_to_keep and takes_logits_to_keep(model) else {}
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask), use_cache=False, **keep).logits
        logits = logits[:, -logits_to_keep:] if logits_to_keep else logits
    logits = logits[:, :-1] / temperature  # [B, N-1, V]
    logprobs = selective_log_softmax(logits, input_ids[:, input_ids.shape[1] - logits.shape[1]:])
    return (logprobs, entropy_from_logits(logits)) if with_entropy else logprobs


def last_hidden_state(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The transformer body's final hidden state ``[B, T, H]`` of a padded batch, positions
    counted over real tokens (a ``peft`` model: its base model, LoRA layers included). For a
    plain GPT-2, computed on the real tokens only and 0 at padding
    (:func:`rlhf_utils.gpt2_fast.padding_free_hidden_state`); elsewhere padding holds what the model
    left there. Either way, mask it out."""
    hf = hf_model(model)
    if gpt2_fast.supports(hf):
        return gpt2_fast.padding_free_hidden_state(hf, input_ids, attention_mask)
    return hf.base_model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state


def hf_model(model):
    """The Hugging Face causal LM inside ``model``: a ``peft`` wrapper's base model (with the
    LoRA layers injected), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def takes_logits_to_keep(model) -> bool:
    """Whether the causal LM can compute its logits for the last N positions only (the
    ``logits_to_keep`` argument of ``transformers``' causal LMs); a model without it computes
    them all and the rest are dropped."""
    return "logits_to_keep" in inspect.signature(hf_model(model).forward).parameters


def response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                      temperature: float = 1.0, with_entropy: bool = False):
    """Log-probabilities of each response token given its prompt and the tokens before it.

    Prompts left-padded [B, P], responses right-padded [B, R]; returns [B, R] (and the
    entropy [B, R] with ``with_entropy``). Values at padded positions are meaningless:
    multiply by ``response_mask``. The LM head runs on the R + 1 positions that predict
    response tokens only (the last prompt token's and the response's), not on the prompt's:
    in an RLHF batch whose prompts are long and whose vocabulary is large, that is most of
    the logits' time and memory.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return token_logprobs(model, input_ids, attention_mask, temperature, with_entropy,
                          logits_to_keep=response_ids.shape[1] + 1)


def continuation_logprobs(model, tokenizer, prompts: list[str], continuations: list[str],
                          add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each continuation (and its EOS) given its prompt.

    Returns (logprobs [B, R], mask [B, R]); ``(logprobs * mask).sum(1)`` is the
    log-probability of the whole continuation.
    """
    device = check_model(model, tokenizer, "continuation_logprobs")
    prompts = check_texts("prompts", prompts, "prompts")
    continuations = check_texts("continuations", continuations, "continuations")
    if len(prompts) != len(continuations):
        raise ValueError(f"continuation_logprobs: {len(prompts)} prompts but {len(continuations)} continuations: "
                         "pass one continuation per prompt")
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    response_ids, response_mask = encode_responses(tokenizer, continuations, device, add_eos)
    logprobs = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    return logprobs * response_mask, response_mask


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to -inf (k <= 0: keep all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches ``p``.

    The most likely token is always kept; p >= 1 keeps everything.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` [B, V] (rows summing to ~1, zeros allowed): ``[B]`` token ids.

    Inverse-CDF sampling: ``x = (1 - u) * total`` with ``u ~ U[0, 1)``, so ``0 < x <= total``,
    and the first token whose cumulative probability reaches ``x``. A token of probability 0
    adds nothing to the CDF, so the token before it reaches ``x`` first: it is never drawn.
    The same distribution as ``torch.multinomial(probs, 1)`` (tested), which draws V
    exponentials per row instead of one uniform: ~8x slower for this course's 85-token
    vocabulary on a CPU.
    """
    cdf = probs.cumsum(-1)  # [B, V], non-decreasing
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, (1 - u) * cdf[:, -1:])[:, 0]  # [B]


class _Decoder:
    """Any Hugging Face causal LM fed one new token per row, with its own KV cache.

    ``prefill(prompt_ids, prompt_mask)`` reads the left-padded prompts; each ``step(token,
    alive)`` appends one token per row (``alive`` False: the row has ended, its token is
    padding and is masked out). Both return ``(logits [B, V], hidden [B, H] or None)`` at the
    newest position; ``hidden`` is the final hidden state (after the last norm).
    """

    def __init__(self, model, with_hidden: bool):
        self.model, self.with_hidden = model, with_hidden

    def _forward(self, input_ids, position_ids, cache=None):
        out = self.model(input_ids=input_ids, attention_mask=self.mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, output_hidden_states=self.with_hidden)
        self.cache = out.past_key_values
        return out.logits[:, -1], out.hidden_states[-1][:, -1] if self.with_hidden else None

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        self.mask = prompt_mask
        return self._forward(prompt_ids, position_ids_from_mask(prompt_mask))

    def step(self, token: torch.Tensor, alive: torch.Tensor):
        position = self.mask.sum(-1, keepdim=True)  # [B, 1] real tokens so far = the new token's position
        self.mask = torch.cat([self.mask, alive.long()[:, None]], dim=1)
        return self._forward(token[:, None], position, self.cache)


@dataclass
class Samples:
    """A batch of sampled completions, laid out for log-prob computations.

    ``response_mask`` is 1 for real tokens up to and including the first EOS and 0
    after it; ``logprobs`` are log-probabilities of the sampled tokens under the
    temperature-scaled (unfiltered) distribution, 0 at padding.
    """

    prompt_ids: torch.Tensor  # [B, P] left-padded, BOS first
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded with <pad>
    response_mask: torch.Tensor  # [B, R]
    logprobs: torch.Tensor  # [B, R]
    ended: torch.Tensor  # [B] bool: the response ended with EOS
    texts: list[str]  # the completions, decoded (no EOS, no padding)
    hidden: torch.Tensor | None = None  # [B, R, H] with_hidden: the final hidden state each token was chosen from


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           generator: torch.Generator | None = None, with_hidden: bool = False) -> Samples:
    """Sample a completion for each prompt, one token at a time with the KV cache.

    The loop stops when every row has produced EOS or after ``max_new_tokens``.
    ``generator`` (on the model's device) makes sampling repeatable. ``with_hidden`` also
    returns the final hidden state from which each response token was chosen (a value head
    reads it). After the prefill, a plain GPT-2 in eval mode decodes through
    :class:`rlhf_utils.gpt2_fast.GPT2Decoder` (the same numbers, less overhead), any other
    model through its own forward.
    """
    device = check_model(model, tokenizer, "sample")
    prompts = check_texts("prompts", prompts, "prompts")
    check_int("max_new_tokens", max_new_tokens, 1, "e.g. 48")
    check_number("temperature", temperature, 0, low_open=True,
                 fix="a finite number > 0 (1 = the model's own distribution); for the most likely token use greedy=True")
    check_int("top_k", top_k, 0, "0 keeps every token")
    check_number("top_p", top_p, 0, 1, low_open=True, fix="1 keeps every token; 0.9 keeps the top 90% of the mass")
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != device.type):
        raise TypeError(f"generator must be a torch.Generator on the model's device ({device}), got "
                        f"{generator.device if isinstance(generator, torch.Generator) else type(generator).__name__}"
                        f": pass torch.Generator(device={str(device)!r}).manual_seed(seed)")
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    if prompt_ids.shape[1] + max_new_tokens > context_length(model):
        raise ValueError(
            f"prompts of {prompt_ids.shape[1]} tokens + max_new_tokens={max_new_tokens} exceed the "
            f"model's context of {context_length(model)} tokens: shorten the prompts or lower max_new_tokens"
        )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    decoder = _Decoder(model, with_hidden)
    logits, hidden = decoder.prefill(prompt_ids, prompt_mask)
    if gpt2_fast.supports(model):
        decoder = gpt2_fast.GPT2Decoder(model, decoder.cache, prompt_mask, max_new_tokens, with_hidden)
    tokens, logps, alive, hiddens = [], [], [], []
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        logits = logits.float() / temperature  # [B, V]
        if greedy:
            token = logits.argmax(-1)
        else:
            filtered = top_p_filter(top_k_filter(logits, top_k), top_p)
            token = sample_categorical(torch.softmax(filtered, -1), generator)
        logps.append(selective_log_softmax(logits, token))
        alive.append(~done)
        hiddens.append(hidden)
        token = token.masked_fill(done, pad)
        tokens.append(token)
        done = done | (token == eos)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits, hidden = decoder.step(token, alive[-1])  # the token just chosen, masked if its row had ended
    response_ids = torch.stack(tokens, 1)  # [B, R]
    response_mask = torch.stack(alive, 1).long()  # [B, R]
    logprobs = torch.stack(logps, 1) * response_mask
    ended = ((response_ids == eos) & response_mask.bool()).any(1)
    texts = decode_responses(tokenizer, response_ids, response_mask)
    return Samples(prompt_ids, prompt_mask, response_ids, response_mask, logprobs, ended, texts,
                   torch.stack(hiddens, 1) if with_hidden else None)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Decode each response's real tokens, dropping EOS and the padding after it.

    Any other special token the model sampled (``<pad>``, ``<bos>``, ``<unk>``) stays in
    the text as written, so whoever scores the text scores what the model produced.
    """
    eos = tokenizer.eos_token_id
    rows = []
    for ids, m in zip(response_ids.tolist(), response_mask.tolist()):
        rows.append([t for t, keep in zip(ids, m) if keep and t != eos])
    return tokenizer.batch_decode(rows, skip_special_tokens=False)


# --------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------


def tokenize_examples(tokenizer, examples: list[tuple[str, str]], mask_prompt: bool):
    """Token rows for next-token training: (ids, targets) per example.

    ids = BOS + prompt + completion + EOS; ``targets[t]`` says whether the prediction
    of token t+1 counts: every real token after BOS, or only the completion and its
    EOS when ``mask_prompt`` (supervised fine-tuning).
    """
    prompts = tokenizer([p for p, _ in examples], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in examples], add_special_tokens=False)["input_ids"]
    rows = []
    for p, c in zip(prompts, completions):
        ids = [tokenizer.bos_token_id] + p + c + [tokenizer.eos_token_id]
        first_target = 1 + len(p) if mask_prompt else 1
        rows.append((ids, [0] * (first_target - 1) + [1] * (len(ids) - first_target)))
    return rows


def collate(rows, pad_id: int, device=None):
    """(input_ids [B, T], attention_mask [B, T], loss_mask [B, T-1]) from token rows, right-padded."""
    input_ids, attention_mask = pad_right([ids for ids, _ in rows], pad_id, device)
    loss_mask, _ = pad_right([t for _, t in rows], 0, device)
    return input_ids, attention_mask, loss_mask[:, : input_ids.shape[1] - 1]


def lm_batch(tokenizer, examples: list[tuple[str, str]], mask_prompt: bool, device=None):
    """A training batch for (prompt, completion) pairs; see :func:`tokenize_examples`."""
    return collate(tokenize_examples(tokenizer, examples, mask_prompt), tokenizer.pad_token_id, device)


def _check_fits(model, rows: list[list[int]], what: str) -> None:
    """Every token row fits in the model's context (else an embedding lookup fails deep in torch)."""
    context = context_length(model)
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    if len(rows[longest]) > context:
        raise ValueError(f"{what}[{longest}] is {len(rows[longest])} tokens long with BOS and EOS, more than the "
                         f"model's context of {context} tokens: shorten or drop it")


def lm_loss(model, input_ids, attention_mask, loss_mask) -> torch.Tensor:
    """Mean negative log-likelihood over the tokens ``loss_mask`` selects."""
    return -masked_mean(token_logprobs(model, input_ids, attention_mask), loss_mask)


def cosine_lr(step: int, steps: int, peak: float, warmup_steps: int = 0, floor: float = 0.1) -> float:
    """The learning rate at ``step`` of ``steps``: a linear warm-up to ``peak`` over
    ``warmup_steps``, then a cosine decay to ``floor * peak`` (InstructGPT's schedule for its
    SFT and reward models, Ouyang et al. 2022, appendix C)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, with weight decay on the matrices only
    (not on biases and norm gains, as nanoGPT and most LM training code)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=learning_rate)


def train_lm(model, tokenizer, examples: list[tuple[str, str]], steps: int, batch_size: int,
             learning_rate: float, warmup_steps: int = 0, weight_decay: float = 0.0,
             mask_prompt: bool = False, seed: int = 0, progress: bool = True,
             desc: str = "training") -> list[float]:
    """Train ``model`` in place on (prompt, completion) pairs; return the loss of each step.

    Pre-training: prompts are "" and every token counts. Supervised fine-tuning:
    ``mask_prompt=True`` and only the completion (and its EOS) is learned. The learning
    rate follows :func:`cosine_lr`; gradients are clipped to a global norm of 1.
    """
    device = check_model(model, tokenizer, "train_lm")
    if isinstance(examples, (str, bytes)) or not hasattr(examples, "__len__") or not examples:
        raise ValueError(f"train_lm needs a non-empty list of (prompt, completion) examples, got {examples!r:.60}")
    for i, ex in enumerate(examples):
        if not isinstance(ex, (tuple, list)) or len(ex) != 2 or not all(isinstance(t, str) for t in ex):
            raise TypeError(f"examples[{i}]={ex!r:.60} is not a (prompt, completion) pair of str: pre-training "
                            "uses ('', text), fine-tuning (prompt, completion)")
    check_int("steps", steps, 1, "e.g. 600")
    check_int("batch_size", batch_size, 1, "e.g. 64")
    check_number("learning_rate", learning_rate, 0, low_open=True, fix="e.g. 5e-4")
    check_int("warmup_steps", warmup_steps, 0)
    check_number("weight_decay", weight_decay, 0, fix="e.g. 0.01")
    check_int("seed", seed, None)
    rows = tokenize_examples(tokenizer, examples, mask_prompt)
    _check_fits(model, [ids for ids, _ in rows], "examples")
    optimizer = adamw(model, learning_rate, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, learning_rate, warmup_steps)
        picks = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        loss = lm_loss(model, *collate([rows[i] for i in picks], tokenizer.pad_token_id, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def mean_nll(model, tokenizer, texts: list[str], batch_size: int = 256) -> float:
    """Mean negative log-likelihood per predicted token (every token after BOS, EOS included)."""
    device = check_model(model, tokenizer, "mean_nll")
    texts = check_texts("texts", texts, "texts")
    check_int("batch_size", batch_size, 1, "e.g. 256")
    _check_fits(model, [[0, 0] + ids for ids in _ids(tokenizer, texts)], "texts")  # + BOS and EOS
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        batch = lm_batch(tokenizer, [("", t) for t in texts[i:i + batch_size]], False, device)
        logprobs = token_logprobs(model, batch[0], batch[1])
        total -= float((logprobs * batch[2]).sum())
        count += int(batch[2].sum())
    return total / count


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 256) -> float:
    """exp(mean negative log-likelihood per token): 'as unsure as a uniform choice among N'."""
    return math.exp(mean_nll(model, tokenizer, texts, batch_size))
