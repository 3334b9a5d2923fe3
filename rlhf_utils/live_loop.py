"""The loop, live: the reader rates pairs while the reward model and the policy learn from them.

Ziegler et al. (2019, "Fine-tuning language models from human preferences", section 2.3) ran
RLHF *online*: labellers judged samples of the policy being trained, the reward model was
retrained on all labels so far, and the policy went on training against it. InstructGPT and most
projects since collect labels offline, in batches. Here the loop runs in one kernel, with the
reader as the labeller (logic only: the widget is :func:`rlhf_utils.widgets.live_loop_widget`).

**One round** (:meth:`LiveLoop.train_round`), once ``k`` new labels are in the store:

1. *the labels so far* -- the store's live judgements (corrections applied, the last word wins)
   of the pairs this loop offered: the reader's, the scripted reader's, the simulated mix;
2. *test, then train* -- the reward model's agreement with each new label **before** it trains on
   it (prequential evaluation, Dawid 1984): held out by construction, no label spent on a test set;
3. *reward model* -- ``rm_steps`` AdamW steps of the Bradley--Terry loss on minibatches of all
   labels (:func:`reward_updates`), warm-started from the last round, then re-normalised to mean 0,
   std 1 on fixed SFT samples (notebook 05) so PPO's KL coefficient keeps its meaning; with
   ``strategy="uncertain"`` and ``ensemble_size`` K > 1, K - 1 more members (other heads at the
   start) take as many steps, each on its own bootstrap resample of the labels -- they only choose;
4. *policy* -- ``ppo_steps`` iterations of :class:`rlhf_utils.ppo.PPOTrainer` against it;
5. *next pairs* -- the updated policy writes ``candidate_pool`` pairs; :func:`rlhf_utils.active.select_pairs`
   picks the ones to ask about; the simulated annotator labels ``simulated_per_round`` others;
6. *measure and save* -- gold agreement, the policy's gold reward and KL, two samples; the state is
   written atomically.

**Durable.** The store (:class:`rlhf_utils.feedback.FeedbackStore`) holds every label, one line
fsync'd per click; the state folder (reward model, PPO state, optimizer, counters, the pairs
offered) is rewritten atomically (:func:`rlhf_utils.checkpoints.atomic_folder`) after each round.
A new kernel loads it and resumes: labels given after the last round are in the store and go into
the next one, so at most the click in flight is lost. Two kernels on one state folder are refused
(a file lock); two tabs on one kernel share the session.

**Threads.** :meth:`LiveLoop.start` runs rounds on a background thread. A click is handled on the
kernel's thread: it writes the store and wakes the worker, and never waits for training; labels
given during a round queue (in the store) for the next one. A round that fails (a NaN, out of
memory) stops the worker with :attr:`LiveLoop.error` saying what happened; the store is untouched
and the saved state is the last good round's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rlhf_utils import lm
from rlhf_utils.active import select_pairs
from rlhf_utils.annotators import SCRIPTED_READER
from rlhf_utils.checks import check_texts
from rlhf_utils.config import LiveLoopConfig, PPOConfig, get_device
from rlhf_utils.evaluation import pairwise_agreement
from rlhf_utils.feedback import SCHEMA_VERSION, FeedbackStore, item_key, live_judgements
from rlhf_utils.live_threads import LiveSession, LoopWorker
from rlhf_utils.preferences import PreferencePair, is_reader, pairs_from_judgements
from rlhf_utils.reward import RewardModel, bradley_terry_loss, pair_rewards, pair_tensors
from rlhf_utils.reward_ensemble import bootstrap_pairs

FORMAT = "rlhf_utils.live_loop/1"
STATE_FILE = "loop_state.json"
FREE_ON_RESUME = ("n_labels", "target_gold_agreement", "simulated_per_round")
"""config fields a resumed loop may change"""


class LiveLoopError(RuntimeError):
    """A round failed; the message says what happened and that the labels are kept."""


def reward_updates(model: RewardModel, pairs: Sequence[PreferencePair], steps: int, batch_size: int,
                   optimizer: torch.optim.Optimizer, generator: torch.Generator, max_grad_norm: float = 1.0
                   ) -> list[float]:
    """``steps`` optimizer steps of the Bradley--Terry loss (ties: target 1/2) on ``model``, each
    on ``batch_size`` pairs drawn without replacement from all ``pairs`` (all of them when fewer).
    Warm: the model and ``optimizer`` carry on from where they were. Returns the losses; a loss
    that is not finite raises ``FloatingPointError`` before the step is taken."""
    chosen, rejected, tie = pair_tensors(model, pairs)
    model.requires_grad_(True).train()
    losses = []
    try:
        for step in range(steps):
            idx = torch.randperm(len(pairs), generator=generator)[:batch_size].tolist()
            r_chosen, r_rejected = pair_rewards(model, [chosen[i] for i in idx], [rejected[i] for i in idx])
            loss = bradley_terry_loss(r_chosen, r_rejected, tie[idx].to(model.device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"reward-model step {step + 1}: the Bradley-Terry loss is {loss.item()} "
                                         "(not finite): lower rm_learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(loss.item())
    finally:
        model.eval().requires_grad_(False)
    return losses


def refuse_newer_schema(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming the store and the version if any line of it was written by a
    newer schema than this rlhf_utils reads (a loop must not train on part of a store)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                schema = json.loads(raw).get("schema")
            except Exception:  # damaged lines are the store's business (skipped with a warning)
                continue
            if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
                raise ValueError(f"{path}:{lineno} was written by feedback schema {schema}, newer than this "
                                 f"rlhf_utils reads (schema {SCHEMA_VERSION}): upgrade rlhf_utils to run the live "
                                 "loop on this store, or start a new store")


class LiveLoop(LoopWorker):
    """The live loop's state and rounds. ``policy``: the SFT policy (copied, never changed);
    ``prompts``: the pool the policy writes for; ``state_dir``: where the state is saved (loaded
    from, when it holds one and ``resume``); ``store``: the feedback store of the labels.
    ``gold(completions, prompts) -> array`` (``World.gold_rewards``) adds the gold figures;
    ``simulated`` (a :class:`rlhf_utils.annotators.SimulatedAnnotator`) gives the simulated mix."""

    def __init__(self, policy, tokenizer, prompts: Sequence[str], config: LiveLoopConfig, ppo_config: PPOConfig,
                 state_dir: str | os.PathLike, store: FeedbackStore | str | os.PathLike, *,
                 gold: Callable | None = None, simulated=None, device=None, resume: bool = True):
        from filelock import FileLock, Timeout

        from rlhf_utils.lm import adamw
        from rlhf_utils.ppo import PPOTrainer

        if not isinstance(config, LiveLoopConfig) or not isinstance(ppo_config, PPOConfig):
            raise TypeError("config must be a LiveLoopConfig and ppo_config a PPOConfig (rlhf_utils.config)")
        if config.simulated_per_round and simulated is None:
            raise ValueError(f"simulated_per_round={config.simulated_per_round}: pass simulated=SimulatedAnnotator(...)")
        self.cfg, self.gold, self.simulated = config, gold, simulated
        self.prompts = check_texts("prompts", prompts, "prompts")
        self.store = store if isinstance(store, FeedbackStore) else FeedbackStore(store)
        refuse_newer_schema(self.store.path)
        self.state_dir = Path(state_dir).expanduser()
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        _stop_other_loop(self.state_dir)
        self._lock = FileLock(str(self.state_dir) + ".lock")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RuntimeError(f"another kernel is running a live loop on {self.state_dir}: stop it there (loop.stop()) "
                               "or pass another state_dir") from None
        _RUNNING[str(self.state_dir.resolve())] = self
        self.device = get_device(device)
        self.ppo_config = dataclasses.replace(ppo_config, batch_size=config.ppo_batch_size, num_minibatches=2,
                                              learning_rate=config.ppo_learning_rate, anneal_lr=False,
                                              seed=config.seed)
        saved = self._read_state() if resume else None
        n_members = config.ensemble_size if config.strategy == "uncertain" else 1
        self.members = [RewardModel.load(self.state_dir / f"reward{k or ''}", device=self.device) if saved else
                        RewardModel.from_policy(policy, tokenizer, init_std=0.1 if k else 0.0,
                                                seed=config.seed + k).to(self.device) for k in range(n_members)]
        self.rm = self.members[0]  # the reward PPO trains against; the others only choose pairs
        self.rm_opts = [adamw(m, config.rm_learning_rate, 0.0) for m in self.members]  # before PPO freezes rm
        self.trainer = PPOTrainer(copy.deepcopy(policy), tokenizer, self.rm, self.prompts, self.ppo_config,
                                  device=self.device)
        self.tokenizer, self.generator = tokenizer, torch.Generator().manual_seed(config.seed)
        self._in_round: set[str] = set()
        self._init_worker()
        self._labels_cache: tuple[tuple, list[dict]] = ((), [])
        if saved:
            self._load(saved)
        else:
            self._fresh()
            self.save()
        self.rounds_shown = self.round

    # ---- state --------------------------------------------------------------------------

    def _fresh(self) -> None:
        c, ref = self.cfg, self.trainer.ref_policy
        self.round, self.history, self.trained = 0, [], []
        rng = np.random.default_rng(c.seed)
        self.norm_prompts = [self.prompts[i] for i in rng.integers(0, len(self.prompts), c.n_normalise)]
        self.norm_texts = self._sample(ref, self.norm_prompts, c.seed + 1)
        eval_prompts = [self.prompts[i] for i in rng.integers(0, len(self.prompts), c.n_eval_pairs)]
        texts = self._sample(ref, [p for p in eval_prompts for _ in (0, 1)], c.seed + 2)
        self.eval_pairs = [(p, a, b) for p, a, b in zip(eval_prompts, texts[0::2], texts[1::2]) if a != b]
        self.show_prompts = [self.prompts[i] for i in rng.integers(0, len(self.prompts), 2)]
        self.before = self._sample(ref, self.show_prompts, c.seed + 3)
        first = self._candidates(ref, -1)
        picked = select_pairs(first, None, c.first_pairs, "random", seed=c.seed)
        self.offered = [list(first[i]) + [0] for i in picked]  # (prompt, a, b, round offered)
        self.sft_gold = self._gold_mean([q for q, _, _ in self.eval_pairs] * 2,
                                        [a for _, a, _ in self.eval_pairs] + [b for _, _, b in self.eval_pairs])

    def _read_state(self) -> dict | None:
        file = self.state_dir / STATE_FILE
        if not file.is_file():
            return None
        state = json.loads(file.read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise ValueError(f"{file} has format {state.get('format')!r}, not {FORMAT!r}: written by another (newer?) "
                             "rlhf_utils; upgrade it, or pass another state_dir to start afresh")
        now = dataclasses.asdict(self.cfg)
        diffs = [f"{k}: saved {v!r}, now {now.get(k)!r}" for k, v in state["config"].items()
                 if k not in FREE_ON_RESUME and now.get(k) != v]
        if diffs:
            raise ValueError(f"cannot resume the live loop in {self.state_dir}: it ran with another LiveLoopConfig ("
                             + "; ".join(diffs) + "). Use the same config, or another state_dir to start afresh.")
        return state

    def _load(self, state: dict) -> None:
        self.trainer.load_state(self.state_dir / "ppo")
        opts = torch.load(self.state_dir / "reward_optimizer.pt", map_location=self.device, weights_only=True)
        for k, opt in enumerate(self.rm_opts):
            opt.load_state_dict(opts[str(k)])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        for name in ("round", "history", "trained", "norm_prompts", "norm_texts", "show_prompts", "before",
                     "offered", "sft_gold"):
            setattr(self, name, state[name])
        self.eval_pairs = [tuple(p) for p in state["eval_pairs"]]

    def save(self) -> Path:
        """Write the state folder atomically: reward model, PPO state, optimizer, counters, pairs offered."""
        from rlhf_utils.checkpoints import atomic_folder

        state = {"format": FORMAT, "config": dataclasses.asdict(self.cfg), "generator": self.generator.get_state().tolist(),
                 **{name: getattr(self, name) for name in ("round", "history", "trained", "norm_prompts", "norm_texts",
                                                           "show_prompts", "before", "offered", "sft_gold", "eval_pairs")}}
        with atomic_folder(self.state_dir) as tmp:
            for k, member in enumerate(self.members):
                member.save(tmp / f"reward{k or ''}")
            self.trainer.save_state(tmp / "ppo")
            torch.save({str(k): opt.state_dict() for k, opt in enumerate(self.rm_opts)}, tmp / "reward_optimizer.pt")
            (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        return self.state_dir

    # ---- labels ---------------------------------------------------------------------------

    def labels(self) -> list[dict]:
        """The live judgements with a winner or a tie of the pairs this loop offered or had
        labelled, in the order they were made (cached while the store file is unchanged)."""
        try:
            st = os.stat(self.store.path)
            stamp = (st.st_size, st.st_mtime_ns, len(self.offered))
        except FileNotFoundError:
            stamp = (0, 0, len(self.offered))
        if stamp != self._labels_cache[0]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # damaged lines are reported by the rating session
                records = self.store.records()
            keys = {r["item"] for r in records if r.get("live_round") is not None} | self._offered_keys()
            live = [r for r in live_judgements(records, kind="pair") if r["item"] in keys
                    and r["choice"] in ("a", "b", "tie") and not r.get("repeat") and not r.get("calibration")]
            self._labels_cache = (stamp, live)
        return self._labels_cache[1]

    def _offered_keys(self) -> set[str]:
        return {item_key(p, a, b) for p, a, b, _ in self.offered}

    def pending(self) -> list[dict]:
        """Labels not yet trained on (given since the last round started)."""
        done = set(self.trained)
        return [r for r in self.labels() if r["id"] not in done]

    def counts(self) -> dict[str, int]:
        """Labels so far by who gave them: ``reader`` (a person), ``scripted`` (the scripted
        reader), ``simulated`` (the simulated mix); ``queued`` = given but not yet trained on."""
        labels, done = self.labels(), set(self.trained)
        return {"labels": len(labels), "reader": sum(is_reader(r["annotator"]) for r in labels),
                "scripted": sum(r["annotator"] == SCRIPTED_READER for r in labels),
                "simulated": sum(not is_reader(r["annotator"]) and r["annotator"] != SCRIPTED_READER for r in labels),
                "queued": sum(r["id"] not in done and r["id"] not in self._in_round for r in labels)}

    def summary(self) -> dict:
        """What the panel shows: counts, the reward model's agreement with the labels before training
        on them (the last 32) and with the gold order, the policy's gold reward and KL, two samples."""
        counts, last = self.counts(), (self.history[-1] if self.history else {})
        window = [x for row in reversed(self.history) for x in reversed(row["prequential"])][:32]
        rated = {r["item"] for r in self.labels()}
        return {**counts, "round": self.round, "status": self.status, "error": self.error,
                "to_rate": sum(k not in rated for k in self._offered_keys()),
                "prequential": float(np.mean(window)) if window else float("nan"), "prequential_n": len(window),
                "rm_gold_agreement": last.get("rm_gold_agreement", float("nan")),
                "policy_gold": last.get("policy_gold", self.sft_gold), "sft_gold": self.sft_gold,
                "policy_kl": last.get("policy_kl", 0.0), "round_seconds": last.get("seconds", float("nan")),
                "samples": [(p, b, a) for p, b, a in zip(self.show_prompts, self.before, last.get("after", self.before))]}

    def status_text(self) -> str:
        """The panel as plain text (what a headless run prints)."""
        s = self.summary()
        state = {"training": f"training round {s['round'] + 1}…", "stopped": "STOPPED", "paused": "paused"}.get(
            s["status"], f"waiting for {max(0, self.cfg.k - s['queued'])} more label(s)")
        lines = [f"round {s['round']} · {state} · {s['labels']} labels: {s['reader']} from you, {s['scripted']} from the "
                 f"scripted reader (simulated, not yours), {s['simulated']} simulated · {s['queued']} queued for the next "
                 f"round · {s['to_rate']} pair(s) to rate",
                 f"reward model: agreed with {s['prequential']:.2f} of the last {s['prequential_n']} labels before "
                 f"training on them · with the gold order {s['rm_gold_agreement']:.2f}",
                 f"policy: gold reward {s['policy_gold']:+.3f} (SFT {s['sft_gold']:+.3f}) · KL to SFT "
                 f"{s['policy_kl']:.2f} nats · last round {s['round_seconds']:.1f} s"]
        return "\n".join(lines + ([s["error"]] if s["error"] else []))

    def close(self) -> None:
        """Stop the worker and release the state folder's lock (another kernel may take it)."""
        self.stop()
        self._lock.release()
        _RUNNING.pop(str(self.state_dir.resolve()), None)

    # ---- one round ------------------------------------------------------------------------

    def _sample(self, model, prompts: list[str], seed: int) -> list[str]:
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return lm.sample(model, self.tokenizer, prompts, self.ppo_config.max_new_tokens,
                         temperature=self.ppo_config.temperature, generator=gen).texts

    def _candidates(self, model, round_: int, seen: set[str] = frozenset()) -> list[tuple[str, str, str]]:
        """``(prompt, a, b)`` pairs of two different completions by ``model``, each pair once and
        none whose item key is in ``seen`` (offered before: a policy that has settled on its
        favourite texts writes the same pair again, and a reader cannot rate it twice)."""
        rng = np.random.default_rng([self.cfg.seed, round_ + 1])
        prompts = [self.prompts[i] for i in rng.integers(0, len(self.prompts), self.cfg.candidate_pool)]
        texts = self._sample(model, [p for p in prompts for _ in (0, 1)], self.cfg.seed * 7919 + round_ + 11)
        pairs: dict[str, tuple[str, str, str]] = {}
        for p, a, b in zip(prompts, texts[0::2], texts[1::2]):
            if a != b and (key := item_key(p, a, b)) not in seen:
                pairs.setdefault(key, (p, a, b))
        return list(pairs.values())

    def _gold_mean(self, prompts: list[str], texts: list[str]) -> float:
        return float("nan") if self.gold is None else float(np.mean(self.gold(texts, prompts)))

    def _margins(self, pairs: Sequence[tuple[str, str, str]]) -> np.ndarray:
        """``r(a) - r(b)`` of each ``(prompt, a, b)`` under the reward model PPO trains against (raw scale)."""
        prompts = [p for p, _, _ in pairs]
        return (self.rm.raw_score(prompts, [a for _, a, _ in pairs])
                - self.rm.raw_score(prompts, [b for _, _, b in pairs])).cpu().numpy()

    def _agreement(self, pairs: Sequence[tuple[str, str, str]], d_gold: np.ndarray) -> float:
        return pairwise_agreement(self._margins(pairs), d_gold)

    def gold_gaps(self, pairs: Sequence[tuple[str, str, str]]) -> np.ndarray:
        prompts = [p for p, _, _ in pairs]
        return np.asarray(self.gold([a for _, a, _ in pairs], prompts)) - np.asarray(self.gold([b for _, _, b in pairs], prompts))

    def train_round(self) -> list[tuple[str, str, str]]:
        """One round on the labels in the store now (module docstring); returns the new pairs
        offered (also appended to :attr:`offered`). Saves the state at the end."""
        c, t0 = self.cfg, time.perf_counter()
        labels = list(self.labels())
        done = set(self.trained)
        new = [r for r in labels if r["id"] not in done]
        if not new:
            raise ValueError("no new labels in the store since the last round: rate some pairs first")
        self._in_round = {r["id"] for r in new}
        pairs, fresh = pairs_from_judgements(labels), pairs_from_judgements(new)
        strict = [p for p in fresh if not p.tie]
        d_new = self._margins([(p.prompt, p.chosen, p.rejected) for p in strict])
        prequential = [float(x) for x in np.where(d_new > 0, 1.0, np.where(d_new == 0, 0.5, 0.0))]  # test, then train
        losses = reward_updates(self.rm, pairs, c.rm_steps, c.rm_batch_size, self.rm_opts[0], self.generator)
        for k, (member, opt) in enumerate(zip(self.members[1:], self.rm_opts[1:]), start=1):
            reward_updates(member, bootstrap_pairs(pairs, c.seed * 100_003 + self.round * 101 + k), c.rm_steps,
                           c.rm_batch_size, opt, self.generator)
        try:
            self.rm.normalise(self.norm_prompts, self.norm_texts)
        except ValueError:  # every SFT sample scored alike (only ties so far): keep the old scale
            pass
        stats = [self.trainer.step() for _ in range(c.ppo_steps)]
        policy = self.trainer.policy
        candidates = self._candidates(policy, self.round, self._offered_keys())
        picked = select_pairs(candidates, self.members, c.pairs_per_round, c.strategy, c.explore,
                              seed=c.seed * 1009 + self.round)
        offer = [candidates[i] for i in picked]
        if c.simulated_per_round:
            left = [p for i, p in enumerate(candidates) if i not in set(picked)][:c.simulated_per_round]
            records = self.simulated.records(left, rng=np.random.default_rng([c.seed, self.round, 5]),
                                             source={"live_round": self.round + 1, "strategy": "random"})
            self.store.append_many([dict(r, live_round=self.round + 1) for r in records])
        row = {"round": self.round + 1, "n_labels": len(labels), "n_new": len(new),
               "n_reader": sum(is_reader(r["annotator"]) for r in labels), "rm_loss": float(np.mean(losses)),
               "prequential": prequential, "policy_kl": stats[-1]["objective/kl"] if stats else float("nan"),
               "proxy": stats[-1]["objective/scores"] if stats else float("nan"), "ppo_step": self.trainer.step_count,
               "after": self._sample(policy, self.show_prompts, c.seed + 3)}
        if self.gold is not None:
            row["rm_gold_agreement"] = self._agreement(self.eval_pairs, self.gold_gaps(self.eval_pairs))
            row["pool_gold_agreement"] = self._agreement(candidates, self.gold_gaps(candidates))
            row["policy_gold"] = self._gold_mean([p for p, _, _ in candidates] * 2,
                                                 [a for _, a, _ in candidates] + [b for _, _, b in candidates])
            row["labels_gold_agreement"] = (pairwise_agreement(np.ones(len(strict)), self.gold_gaps(
                [(p.prompt, p.chosen, p.rejected) for p in strict])) if strict else float("nan"))
        row["seconds"] = time.perf_counter() - t0
        self.offered += [list(p) + [self.round + 1] for p in offer]
        self.trained += [r["id"] for r in new]
        self.history.append(row)
        self.round += 1
        self.save()
        self._in_round = set()
        return offer

def run_scripted_reader(loop: LiveLoop, annotator, n_labels: int, seed: int = 0, timeout: float = 600,
                        session: LiveSession | None = None) -> list[float]:
    """Drive ``loop`` with the scripted reader, as notebook 09 and ``benchmarks/live_loop.py`` do: on
    a session of the loop (``session``, else a new one, named :data:`rlhf_utils.annotators.SCRIPTED_READER`), it rates the
    ``k`` pairs a round waits for through the session's handlers, waits while the worker thread
    trains and hands over the next pairs, and again, until ``n_labels`` labels are in. Returns the
    seconds from each batch's last click to the new pairs in the session (the reader's wait)."""
    from rlhf_utils.annotators import scripted_reader

    session = session or loop.session(SCRIPTED_READER)
    if not session.started:
        session.start(SCRIPTED_READER)
    loop.start()
    rng, waits = np.random.default_rng([seed, loop.round]), []
    while (have := len(loop.labels())) < n_labels:
        want = min(loop.cfg.k - len(loop.pending()), n_labels - have)
        if scripted_reader(session, annotator, want, rng) < want and not loop.pending():
            raise LiveLoopError(f"the scripted reader found none of {want} pairs to rate: {session.message}")
        if len(loop.pending()) < loop.cfg.k:
            loop.train_now()  # the last, smaller batch, or all the round offered (fewer new pairs than k)
        t0 = time.perf_counter()
        if not loop.wait(loop.rounds_shown + 1, timeout):
            raise LiveLoopError(loop.error or f"no round finished within {timeout} s")
        waits.append(time.perf_counter() - t0)
    return waits


_RUNNING: dict[str, LiveLoop] = {}
"""the loop of each state folder in this kernel: a re-run cell's new loop stops the old one first"""


def _stop_other_loop(state_dir: Path) -> None:
    old = _RUNNING.get(str(state_dir.resolve()))
    if old is not None:
        old.close()
