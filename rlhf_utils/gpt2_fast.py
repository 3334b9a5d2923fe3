"""GPT-2's arithmetic op for op: a faster decoding step and a forward that skips the padding.

A speed trick, kept apart because it reads transformers' internals: the layout of
``GPT2LMHeadModel`` (``transformer.h[i].attn.c_attn`` ...), its ``Conv1D`` weights, the
prefill cache's ``layers[i].keys`` and the config's attention implementation. Two uses:

* **decoding** (:class:`GPT2Decoder`) -- after the model's own forward has read the prompts
  (the prefill, in :func:`rlhf_utils.lm.sample`), each new token goes through GPT-2's
  arithmetic -- layer norm, fused QKV projection, scaled-dot-product attention over
  preallocated key/value buffers, MLP -- without the per-call overhead of the module stack.
  For this course's small model on a CPU that is a third of the sampling time
  (``benchmarks/ppo_vs_trl.py`` prints sampler vs ``generate``); bit-identical to the model.
* **a padded batch** (:func:`padding_free_hidden_state`) -- the PPO update's forward and backward,
  the reference pass: every per-token operation (norms, projections, MLP) runs on the real
  tokens only, gathered into one ``[N, E]`` block, and attention on the rows laid out again,
  each one's tokens moved to its left so that the causal mask alone keeps padding out of
  sight. An RLHF batch is a third padding (left-padded prompts, right-padded responses of
  every length); here that third costs nothing (``benchmarks/update_variants.py``).

The fall-back is the model's own forward, taken for:

* any other model (Llama, Qwen2, a LoRA-wrapped or a training-mode GPT-2, eager attention,
  non-standard attention scaling, cross-attention);
* a transformers release this module was not tested on (:data:`TESTED_TRANSFORMERS`);
* ``RLHF_FAST_GPT2=0`` in the environment;
* code being traced by ``torch.compile`` (the compiled update traces the model's own forward).

``tests/test_lm.py`` checks that the decoder's logits and hidden states equal the model's
own forward bit for bit, that :func:`padding_free_hidden_state` equals it at every real token (and
its gradients to float rounding), and that each fall-back is taken.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from rlhf_utils.ops import position_ids_from_mask

TESTED_TRANSFORMERS = ("5.23.0",)
"""transformers releases whose GPT-2 internals this module was checked against"""


def supports(model) -> bool:
    """True if ``model`` is a plain GPT-2 this module reproduces exactly, on a tested release,
    outside ``torch.compile``."""
    import transformers
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    if torch.compiler.is_compiling() or os.environ.get("RLHF_FAST_GPT2", "1") == "0":
        return False
    if transformers.__version__ not in TESTED_TRANSFORMERS or type(model) is not GPT2LMHeadModel or model.training:
        return False
    c = model.config
    plain = (getattr(c, "_attn_implementation", None) == "sdpa" and c.scale_attn_weights
             and not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn
             and not c.add_cross_attention)
    return plain and all(type(m) is Conv1D for b in model.transformer.h
                         for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj))


def _qkv(block, config, x: torch.Tensor) -> torch.Tensor:
    """A block's first layer norm and fused query/key/value projection: ``[N, E] -> [N, 3E]``."""
    h = F.layer_norm(x, x.shape[-1:], block.ln_1.weight, block.ln_1.bias, config.layer_norm_epsilon)
    return torch.addmm(block.attn.c_attn.bias, h, block.attn.c_attn.weight)


def _after_attention(block, config, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a block, given its attention's output ``[N, E]``: output projection and
    residual, second layer norm, MLP and residual."""
    mlp = block.mlp
    x = x + torch.addmm(block.attn.c_proj.bias, attended, block.attn.c_proj.weight)
    h = F.layer_norm(x, x.shape[-1:], block.ln_2.weight, block.ln_2.bias, config.layer_norm_epsilon)
    h = mlp.act(torch.addmm(mlp.c_fc.bias, h, mlp.c_fc.weight))
    return x + torch.addmm(mlp.c_proj.bias, h, mlp.c_proj.weight)


def _final_norm(model, x: torch.Tensor) -> torch.Tensor:
    ln_f = model.transformer.ln_f
    return F.layer_norm(x, x.shape[-1:], ln_f.weight, ln_f.bias, model.config.layer_norm_epsilon)


def padding_free_hidden_state(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The final hidden state (after ``ln_f``) ``[B, T, E]`` of a padded batch, positions counted
    over each row's real tokens: at every real token what ``model.transformer`` gives with
    :func:`rlhf_utils.ops.position_ids_from_mask`'s positions, 0 at padding. Differentiable.

    The ``N`` real tokens go through the per-token operations as one ``[N, E]`` block; for
    attention they are scattered into ``[B, W]`` rows (``W`` the longest row's real tokens),
    each row's tokens from column 0, so that the causal mask alone is the padding mask.
    """
    c = model.config
    batch, width = input_ids.shape
    real = attention_mask.reshape(-1).nonzero().squeeze(1)  # [N] the real tokens, row-major
    position = position_ids_from_mask(attention_mask).reshape(-1)[real]  # [N]
    row_width = int(attention_mask.sum(1).max())
    slot = torch.div(real, width, rounding_mode="floor") * row_width + position  # [N] its place in [B, W]
    x = model.transformer.wte(input_ids.reshape(-1)[real]) + model.transformer.wpe(position)  # [N, E]
    for block in model.transformer.h:
        qkv = _qkv(block, c, x)  # [N, 3E]
        rows = qkv.new_zeros(batch * row_width, qkv.shape[1]).index_copy_(0, slot, qkv)
        q, k, v = rows.view(batch, row_width, 3, c.n_head, c.n_embd // c.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, heads, W, head_dim]
        x = _after_attention(block, c, x, attended.transpose(1, 2).reshape(batch * row_width, -1).index_select(0, slot))
    x = _final_norm(model, x)
    return x.new_zeros(batch * width, x.shape[1]).index_copy_(0, real, x).view(batch, width, -1)


class GPT2Decoder:
    """Decoding steps for a plain GPT-2 after its own prefill.

    ``GPT2Decoder(model, cache, prompt_mask, max_new_tokens, with_hidden)`` takes the
    Hugging Face cache the prefill returned; each ``step(token [B], alive [B])`` appends one
    token per row (``alive`` False: the row has ended, its token is padding and is masked
    out) and returns ``(logits [B, V], hidden [B, H] or None)`` at the new position, the
    hidden state being the final one (after ``ln_f``).
    """

    def __init__(self, model, cache, prompt_mask: torch.Tensor, max_new_tokens: int, with_hidden: bool):
        self.model, self.with_hidden = model, with_hidden
        batch, width = prompt_mask.shape
        self.column = width  # where the next token's key and value go
        total = width + max_new_tokens
        self.keys, self.values = [], []
        for layer in cache.layers:  # [B, heads, P, head_dim] each
            k = layer.keys.new_zeros(layer.keys.shape[:2] + (total, layer.keys.shape[-1]))
            v = torch.zeros_like(k)
            k[:, :, :width], v[:, :, :width] = layer.keys, layer.values
            self.keys.append(k)
            self.values.append(v)
        self.keep = torch.zeros(batch, 1, 1, total, dtype=torch.bool, device=prompt_mask.device)  # attended keys
        self.keep[:, 0, 0, :width] = prompt_mask.bool()
        self.position = prompt_mask.sum(-1)  # [B] the next token's position id

    def step(self, token: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        body, c, t = self.model.transformer, self.model.config, self.column
        batch, heads = token.shape[0], c.n_head
        self.keep[:, 0, 0, t] = alive
        x = body.wte(token) + body.wpe(self.position)  # [B, E]
        self.position = self.position + alive
        for block, keys, values in zip(body.h, self.keys, self.values):
            q, k, v = _qkv(block, c, x).view(batch, 3, heads, -1).unbind(1)
            keys[:, :, t], values[:, :, t] = k, v  # [B, heads, head_dim] into column t
            a = F.scaled_dot_product_attention(q[:, :, None], keys[:, :, :t + 1], values[:, :, :t + 1],
                                               attn_mask=self.keep[..., :t + 1])  # [B, heads, 1, head_dim]
            x = _after_attention(block, c, x, a.reshape(batch, -1))
        x = _final_norm(self.model, x)
        self.column += 1
        return self.model.lm_head(x), x if self.with_hidden else None
