"""The policy with a value head: one transformer body, two heads (next token, value).

PPO needs a value estimate V(s_t) at every response token. As in lm-human-preferences
(Ziegler et al. 2019), the value head is a linear layer on the policy's own last hidden
state, so one forward pass gives both the logits and the values (:class:`PolicyWithValueHead`).
It starts at exactly zero, which is the right answer for a reward normalised to mean 0
under the starting policy.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rlhf_utils.lm import hf_model, last_hidden_state

# --------------------------------------------------------------------------------------
# The policy with its value head
# --------------------------------------------------------------------------------------


class PolicyWithValueHead(nn.Module):
    """A causal LM and a scalar value head ``V(s_t) = w . h_t + b`` on its last hidden state.

    The head starts at exactly zero (weight and bias), so ``V = 0`` everywhere before
    training -- the mean of the normalised score under the reference policy.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.lm = model
        self.v_head = nn.Linear(hf_model(model).config.hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, R, V], values [B, R])`` for positions ``start .. T-2``: the states from
        which tokens ``start+1 .. T-1`` were chosen (``start = P - 1`` for the response of a
        ``[prompt | response]`` batch). One pass of the transformer body; the LM head is
        applied to those positions only."""
        h = last_hidden_state(self.lm, input_ids, attention_mask)[:, start:-1]  # [B, R, H]
        return hf_model(self.lm).get_output_embeddings()(h), self.v_head(h.to(self.v_head.weight.dtype)).squeeze(-1)


def check_forward_matches(model: PolicyWithValueHead) -> None:
    """Our forward is ``lm_head(body(x))``; refuse a model whose own forward does more
    (logit soft-capping, logit scaling), which would make our log-probabilities wrong."""
    hf = hf_model(model.lm)
    ids = torch.arange(5, device=model.v_head.weight.device)[None] % hf.config.vocab_size  # [1, 5]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours, _ = model(ids, mask, start=0)
        theirs = hf(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    if not torch.allclose(ours.float(), theirs.float(), atol=1e-4, rtol=1e-3):
        raise ValueError(
            f"{type(hf).__name__}'s forward does more than lm_head(last_hidden_state) (soft-capping "
            "or scaling of the logits?): PPOTrainer would compute wrong log-probabilities for it. "
            "Use a GPT-2/Llama/Qwen-style causal LM.")
