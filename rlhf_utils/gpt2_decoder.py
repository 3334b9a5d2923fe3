"""A faster decoding step for a plain GPT-2, bit-identical to its Hugging Face forward.

A speed trick, kept apart because it reads transformers' internals: the layout of
``GPT2LMHeadModel`` (``transformer.h[i].attn.c_attn`` ...), its ``Conv1D`` weights, the
prefill cache's ``layers[i].keys`` and the config's attention implementation. After the
model's own forward has read the prompts (the prefill, in :func:`rlhf_utils.lm.sample`),
each new token goes through GPT-2's arithmetic op for op -- layer norm, fused QKV
projection, scaled-dot-product attention over preallocated key/value buffers, MLP -- without
the per-call overhead of the module stack. For this course's small model on a CPU that is
a third of the sampling time (``benchmarks/ppo_vs_trl.py`` prints sampler vs ``generate``).

The fall-back is the model's own forward (``rlhf_utils.lm``'s decoder), taken for:

* any other model (Llama, Qwen2, a LoRA-wrapped or a training-mode GPT-2, eager attention,
  non-standard attention scaling, cross-attention);
* a transformers release this module was not tested on (:data:`TESTED_TRANSFORMERS`);
* ``RLHF_FAST_GPT2=0`` in the environment.

``tests/test_lm.py`` checks that the logits and hidden states it gives equal the model's
own forward bit for bit, and that each fall-back is taken.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

TESTED_TRANSFORMERS = ("5.23.0",)
"""transformers releases whose GPT-2 internals this decoder was checked against, bit for bit"""


def supports(model) -> bool:
    """True if ``model`` is a plain GPT-2 this decoder reproduces exactly, on a tested release."""
    import transformers
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    if os.environ.get("RLHF_FAST_GPT2", "1") == "0" or transformers.__version__ not in TESTED_TRANSFORMERS:
        return False
    if type(model) is not GPT2LMHeadModel or model.training:
        return False
    c = model.config
    plain = (getattr(c, "_attn_implementation", None) == "sdpa" and c.scale_attn_weights
             and not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn
             and not c.add_cross_attention)
    return plain and all(type(m) is Conv1D for b in model.transformer.h
                         for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj))


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
            attn, mlp = block.attn, block.mlp
            h = F.layer_norm(x, x.shape[-1:], block.ln_1.weight, block.ln_1.bias, c.layer_norm_epsilon)
            q, k, v = torch.addmm(attn.c_attn.bias, h, attn.c_attn.weight).view(batch, 3, heads, -1).unbind(1)
            keys[:, :, t], values[:, :, t] = k, v  # [B, heads, head_dim] into column t
            a = F.scaled_dot_product_attention(q[:, :, None], keys[:, :, :t + 1], values[:, :, :t + 1],
                                               attn_mask=self.keep[..., :t + 1])  # [B, heads, 1, head_dim]
            x = x + torch.addmm(attn.c_proj.bias, a.reshape(batch, -1), attn.c_proj.weight)
            h = F.layer_norm(x, x.shape[-1:], block.ln_2.weight, block.ln_2.bias, c.layer_norm_epsilon)
            h = mlp.act(torch.addmm(mlp.c_fc.bias, h, mlp.c_fc.weight))
            x = x + torch.addmm(mlp.c_proj.bias, h, mlp.c_proj.weight)
        x = F.layer_norm(x, x.shape[-1:], body.ln_f.weight, body.ln_f.bias, c.layer_norm_epsilon)
        self.column += 1
        return self.model.lm_head(x), x if self.with_hidden else None
