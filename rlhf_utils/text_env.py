"""Text generation as a (tiny) reinforcement-learning environment: token = action.

The language-model view of RL made small enough for Stable-Baselines3's ``MlpPolicy``:
the state is the text written so far, an action is the next token, and the reward comes
when the text is finished. Notebook 02 trains SB3's PPO on it (the source article's
``CustomEnv`` example, written correctly) and shows why this framing breaks for a real
vocabulary -- the reason RLHF samples whole completions from a language model instead.
"""

from __future__ import annotations

import numpy as np


def _text_env_base():
    import gymnasium as gym

    return gym.Env


class TextGenerationEnv(_text_env_base()):
    """Write a sentence one token at a time: the language-model view of RL, made tiny.

    state = the tokens written so far; action = the next token (one of ``len(vocab)``);
    reward = 0 until the sentence is complete, then the share of positions that match
    ``target`` (the "rater" likes one sentence). Observation: the token ids so far,
    right-padded with the id ``len(vocab)`` to the target's length ([L] integers, a
    ``MultiDiscrete`` space that SB3's ``MlpPolicy`` one-hot encodes). Episodes last
    exactly L steps (termination, never truncation).
    """

    metadata = {"render_modes": []}

    def __init__(self, vocab: tuple[str, ...] = ("the", "film", "was", "great", "awful", "."),
                 target: str = "the film was great ."):
        from gymnasium import spaces

        unknown = [w for w in target.split() if w not in vocab]
        if unknown:
            raise ValueError(f"target words {unknown} are not in the vocabulary {list(vocab)}: add them to vocab.")
        self.vocab = list(vocab)
        self.target = np.array([self.vocab.index(w) for w in target.split()])
        self.length = len(self.target)
        self.pad = len(self.vocab)
        self.observation_space = spaces.MultiDiscrete([len(self.vocab) + 1] * self.length)
        self.action_space = spaces.Discrete(len(self.vocab))
        self.tokens: list[int] = []

    def _obs(self) -> np.ndarray:
        return np.array(self.tokens + [self.pad] * (self.length - len(self.tokens)), dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.tokens = []
        return self._obs(), {}

    def step(self, action):
        self.tokens.append(int(action))
        done = len(self.tokens) == self.length
        reward = float(np.mean(np.array(self.tokens) == self.target)) if done else 0.0
        return self._obs(), reward, done, False, {}

    def text(self) -> str:
        """The sentence written so far."""
        return " ".join(self.vocab[t] for t in self.tokens)
