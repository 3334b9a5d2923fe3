"""The live loop (notebook 09): active selection against naive references, the growing session, the
scripted reader, rounds on a tiny model, resume, queued clicks, a failing round, bad stores, the panel."""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import numpy as np
import pytest
import torch

from rlhf_utils import active, annotators, lm
from rlhf_utils.annotators import SCRIPTED_READER, SimulatedAnnotator, scripted_reader
from rlhf_utils.config import LiveLoopConfig, LMConfig, PPOConfig
from rlhf_utils.feedback import SCHEMA_VERSION, FeedbackStore, load_records, pair_record
from rlhf_utils.live_loop import LiveLoop, refuse_newer_schema, reward_updates, run_scripted_reader
from rlhf_utils.live_threads import WAITING, LiveSession
from rlhf_utils.preferences import PreferencePair, is_reader, reader_agreement
from rlhf_utils.reward import RewardModel
from rlhf_utils.world import World

WORLD = World(0)
PAIRS = [(f"prompt {i} .", f"the film was great {i} .", f"the film was awful {i} .") for i in range(12)]
TINY = LiveLoopConfig(k=4, rm_steps=2, rm_batch_size=8, ppo_steps=1, ppo_batch_size=8, first_pairs=8,
                      pairs_per_round=4, candidate_pool=8, ensemble_size=2, n_normalise=8, n_eval_pairs=8, n_labels=12)
PPO = PPOConfig(max_new_tokens=10, temperature=1.0)


@pytest.fixture(scope="module")
def tokenizer():
    return lm.train_tokenizer(WORLD.corpus(500, seed=11))


@pytest.fixture(scope="module")
def policy(tokenizer):
    torch.manual_seed(0)
    return lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32, seed=0), tokenizer).eval()


def _loop(policy, tokenizer, tmp_path, config=TINY, **kw):
    return LiveLoop(policy, tokenizer, WORLD.prompts(40, seed=12), config, PPO, tmp_path / "state",
                    tmp_path / "store.jsonl", gold=WORLD.gold_rewards, **kw)


def _annotator(**kw):
    return SimulatedAnnotator.from_world(WORLD, temperature=0.15, name=SCRIPTED_READER, **kw)


# --------------------------------------------------------------------------------------
# active selection
# --------------------------------------------------------------------------------------


def test_pair_uncertainty_by_hand():
    assert np.allclose(active.pair_uncertainty(np.array([[0.9, 0.55, 0.2, 0.5]])), [0.1, 0.45, 0.2, 0.5])
    p = np.array([[0.9, 0.5], [0.1, 0.5], [0.5, 0.5]])
    assert np.allclose(active.pair_uncertainty(p), [math.sqrt(((0.4 ** 2) * 2) / 3), 0.0])  # population std
    with pytest.raises(ValueError, match="members, pairs"):
        active.pair_uncertainty(np.array([0.5]))


def test_select_pairs_against_a_naive_loop(policy, tokenizer):
    pairs = [(p, f"it was great {i} .", f"it was bad {i} .") for i, p in enumerate(WORLD.prompts(20, seed=3))]
    members = [RewardModel.from_policy(policy, tokenizer, init_std=0.5, seed=k) for k in range(3)]
    # the naive reference: one probability at a time, the doubt by hand, a plain sort
    probs = []
    for m in members:
        row = []
        for p, a, b in pairs:
            ra, rb = m.raw_score([p], [a]).item(), m.raw_score([p], [b]).item()
            row.append(1 / (1 + math.exp(-(ra - rb))))
        probs.append(row)
    probs = np.array(probs)
    for scorer, p in ((members, probs), (members[0], probs[:1])):
        assert np.allclose(active.pair_probabilities(scorer, pairs), p, atol=1e-6)
        doubt = [float(np.std(p[:, j])) if len(p) > 1 else 0.5 - abs(p[0, j] - 0.5) for j in range(len(pairs))]
        order = list(np.random.default_rng(7).permutation(len(pairs)))
        naive = sorted(order, key=lambda j: (-doubt[j], order.index(j)))[:6]
        naive += [j for j in order if j not in naive][:2]
        assert active.select_pairs(pairs, scorer, 8, "uncertain", explore=0.25, seed=7) == [int(j) for j in naive]
    # random: distinct, seeded, the scorer not asked
    picked = active.select_pairs(pairs, None, 8, "random", seed=1)
    assert len(set(picked)) == 8 and picked == active.select_pairs(pairs, None, 8, "random", seed=1)
    assert active.select_pairs(pairs, None, 50, "random") and len(active.select_pairs(pairs, None, 50, "random")) == 20


def test_a_fresh_zero_head_model_doubts_everything_alike_so_uncertain_is_random(policy, tokenizer):
    pairs = [(p, f"it was great {i} .", f"it was bad {i} .") for i, p in enumerate(WORLD.prompts(10, seed=4))]
    fresh = RewardModel.from_policy(policy, tokenizer)
    assert active.select_pairs(pairs, fresh, 5, "uncertain", seed=3) == active.select_pairs(pairs, None, 5, "random", seed=3)


def test_select_pairs_refuses_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        active.select_pairs(PAIRS, None, 2, "greedy")
    with pytest.raises(ValueError, match="explore"):
        active.select_pairs(PAIRS, None, 2, "random", explore=1.5)
    with pytest.raises(TypeError, match="scorer"):
        active.select_pairs(PAIRS, object(), 2, "uncertain")


def test_labels_to_reach_by_hand():
    assert active.labels_to_reach([40, 80, 120], [0.52, 0.56, 0.62], 0.58) == pytest.approx(80 + 40 / 3)
    assert active.labels_to_reach([40, 80], [0.7, 0.8], 0.6) == 40
    assert math.isnan(active.labels_to_reach([40, 80], [0.5, 0.55], 0.6))
    with pytest.raises(ValueError, match="increase"):
        active.labels_to_reach([40, 40], [0.5, 0.6], 0.55)


# --------------------------------------------------------------------------------------
# the growing session and the scripted reader
# --------------------------------------------------------------------------------------


def test_extend_adds_new_pairs_and_moves_a_waiting_reader(tmp_path):
    s = LiveSession(PAIRS[:2], tmp_path / "r.jsonl", "ann")
    s.start()
    s.choose("A")
    s.choose("B")
    assert s.current is None and s.message == WAITING
    assert s.extend(PAIRS[1:4]) == 2                      # PAIRS[1] was queued already
    assert s.current.prompt == PAIRS[2][0] and "2 new pair(s)" in s.message
    assert len(s.entries) == 4 and s.n_done == 2
    # a new kernel's session on the same pairs resumes at the first one not rated
    again = LiveSession(PAIRS[:4], tmp_path / "r.jsonl")
    assert "Resumed at 2/4" in again.start()


def test_two_tabs_clicking_while_pairs_arrive_lose_nothing_and_interleave_no_lines(tmp_path):
    store = tmp_path / "r.jsonl"
    s = LiveSession(PAIRS[:2], store, "ann")
    s.start()
    errors = []

    def clicker():
        try:
            for _ in range(40):
                s.choose("A")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def grower():
        for i in range(2, 40):
            s.extend([(f"p{i} .", f"a {i} .", f"b {i} .")])

    threads = [threading.Thread(target=f) for f in (clicker, clicker, grower)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    raw = store.read_bytes().splitlines()
    assert all(json.loads(line)["kind"] == "pair" for line in raw)   # whole lines only
    live = FeedbackStore(store).judgements()
    assert len(live) == len(raw) == s.n_done and len({r["item"] for r in live}) == len(live)  # each pair once


def test_scripted_reader_rates_through_the_session_and_is_counted_as_simulated(tmp_path):
    s = LiveSession(PAIRS[:6], tmp_path / "r.jsonl", SCRIPTED_READER)
    s.start()
    sharp = SimulatedAnnotator.from_world(WORLD, temperature=1e-4, name=SCRIPTED_READER)
    assert scripted_reader(s, sharp, 4) == 4
    live = FeedbackStore(tmp_path / "r.jsonl").judgements()
    assert len(live) == 4 and all(r["annotator"] == SCRIPTED_READER for r in live)
    assert not is_reader(SCRIPTED_READER)
    assert all(r["choice"] == "a" for r in live)            # "great" beats "awful" whichever side it was shown on
    assert {r["swapped"] for r in FeedbackStore(tmp_path / "r.jsonl").judgements()} | {e.swapped for e in s.entries} == {True, False}
    assert scripted_reader(s, sharp, 10) == 2               # only two left


# --------------------------------------------------------------------------------------
# rounds on a tiny model
# --------------------------------------------------------------------------------------


def test_reward_updates_lower_the_loss_and_refuse_nan(policy, tokenizer):
    pairs = [PreferencePair(p, f"it was great {i} .", f"it was awful {i} .") for i, p in enumerate(WORLD.prompts(16, seed=5))]
    rm = RewardModel.from_policy(policy, tokenizer)
    losses = reward_updates(rm, pairs, 30, 16, lm.adamw(rm, 1e-2, 0.0), torch.Generator().manual_seed(0))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and losses[-1] < 0.5 * losses[0]
    assert not any(p.requires_grad for p in rm.parameters()) and not rm.training
    broken = RewardModel.from_policy(policy, tokenizer)
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not finite"):
        reward_updates(broken, pairs, 1, 4, lm.adamw(broken, 1e-3, 0.0), torch.Generator())


def test_rounds_run_resume_and_queue_clicks(policy, tokenizer, tmp_path):
    loop = _loop(policy, tokenizer, tmp_path)
    assert loop.round == 0 and len(loop.offered) == TINY.first_pairs and len(loop.members) == 2
    waits = run_scripted_reader(loop, _annotator(), 8, seed=0)
    assert loop.round == 2 and len(waits) == 2 and loop.trainer.step_count == 2
    h = loop.history[-1]
    assert h["n_labels"] == 8 and len(h["after"]) == 2 and 0 <= h["rm_gold_agreement"] <= 1
    assert len(loop.offered) == TINY.first_pairs + 2 * TINY.pairs_per_round
    c = loop.counts()
    assert (c["labels"], c["reader"], c["scripted"], c["queued"]) == (8, 0, 8, 0)
    assert "0 from you, 8 from the scripted reader" in loop.status_text()
    # rate faster than the loop trains: 2k labels before the worker is woken -> one round takes them all
    loop.stop()
    session = loop.sessions[0]
    assert scripted_reader(session, _annotator(), 2 * TINY.k, rng=1) == 2 * TINY.k
    assert loop.counts()["queued"] == 2 * TINY.k
    loop.start()
    assert loop.wait(3, timeout=120)
    assert loop.history[-1]["n_new"] == 2 * TINY.k and loop.counts()["queued"] == 0
    score = loop.rm.score(["i saw this film ."], ["it was great ."])
    counts, steps, offered = loop.counts(), loop.trainer.step_count, len(loop.offered)
    loop.close()
    # a new kernel: the same counts, the same reward model, the same policy step; its session resumes
    again = _loop(policy, tokenizer, tmp_path)
    assert (again.round, again.counts(), again.trainer.step_count, len(again.offered)) == (3, counts, steps, offered)
    assert torch.allclose(again.rm.score(["i saw this film ."], ["it was great ."]), score)
    assert again.session(SCRIPTED_READER).start().startswith(f"Resumed at {counts['labels']}/")
    again.close()
    with pytest.raises(ValueError, match="another LiveLoopConfig.*k: saved 4, now 5"):
        _loop(policy, tokenizer, tmp_path, dataclasses.replace(TINY, k=5))


def test_a_policy_that_repeats_itself_is_never_offered_a_pair_twice(policy, tokenizer, tmp_path, monkeypatch):
    """A policy that has settled on its texts writes the same pairs round after round: the loop
    offers each pair once (a reader cannot rate it twice), and when a round has fewer new pairs
    than k the scripted reader trains on those instead of stalling."""
    from rlhf_utils.feedback import item_key

    def same_texts(self, model, prompts, seed):  # the same two completions for every prompt, every round
        return ["the food was awful .", "the food was great ."] * (len(prompts) // 2) + ["the food was ok ."] * (len(prompts) % 2)

    monkeypatch.setattr(LiveLoop, "_sample", same_texts)
    loop = _loop(policy, tokenizer, tmp_path, dataclasses.replace(TINY, n_labels=24))
    try:
        run_scripted_reader(loop, _annotator(), 24, seed=0)
        keys = [item_key(p, a, b) for p, a, b, _ in loop.offered]
        assert len(keys) == len(set(keys)) and len(loop.labels()) == 24
        assert any(row["n_new"] < TINY.k for row in loop.history)  # a round with fewer new pairs than k
    finally:
        loop.close()


def test_a_failing_round_stops_the_loop_keeps_every_label_and_the_last_good_state(policy, tokenizer, tmp_path):
    loop = _loop(policy, tokenizer, tmp_path)
    session = loop.session(SCRIPTED_READER)
    session.start(SCRIPTED_READER)

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    loop.trainer.step = out_of_memory
    loop.start()
    scripted_reader(session, _annotator(), TINY.k)
    assert not loop.wait(1, timeout=120)
    assert loop.status == "stopped" and "OutOfMemoryError" in loop.error and "Every label is kept" in loop.error
    assert len(load_records(tmp_path / "store.jsonl")) == TINY.k and loop.round == 0
    assert "Training stopped in round 1" in loop.status_text()
    assert session.choose("A") is not None                  # rating goes on; the label is kept
    loop.close()
    again = _loop(policy, tokenizer, tmp_path)              # run the cell again: round 0's state, every label queued
    assert again.round == 0 and again.counts()["queued"] == TINY.k + 1
    again.close()


def test_bad_stores_and_folders_are_refused_by_name(policy, tokenizer, tmp_path):
    store = tmp_path / "store.jsonl"
    store.write_text(json.dumps(dict(pair_record(*PAIRS[0], "a"), schema=SCHEMA_VERSION + 1)) + "\n")
    with pytest.raises(ValueError, match=rf"store.jsonl:1 was written by feedback schema {SCHEMA_VERSION + 1}"):
        _loop(policy, tokenizer, tmp_path)
    with pytest.raises(ValueError, match="schema"):
        refuse_newer_schema(store)
    store.unlink()
    from filelock import FileLock

    with FileLock(str(tmp_path / "state") + ".lock"):       # as another kernel holds it
        with pytest.raises(RuntimeError, match="another kernel is running a live loop"):
            _loop(policy, tokenizer, tmp_path)
    loop = _loop(policy, tokenizer, tmp_path)
    state = json.loads((tmp_path / "state" / "loop_state.json").read_text())
    loop.close()
    (tmp_path / "state" / "loop_state.json").write_text(json.dumps(dict(state, format="rlhf_utils.live_loop/9")))
    with pytest.raises(ValueError, match="live_loop/9"):
        _loop(policy, tokenizer, tmp_path)
    with pytest.raises(ValueError, match="simulated_per_round=2: pass simulated="):
        _loop(policy, tokenizer, tmp_path / "x", dataclasses.replace(TINY, simulated_per_round=2, candidate_pool=8))


def test_the_simulated_mix_adds_labels_counted_as_simulated(policy, tokenizer, tmp_path):
    cfg = dataclasses.replace(TINY, simulated_per_round=2, candidate_pool=8, ensemble_size=1, strategy="random")
    loop = _loop(policy, tokenizer, tmp_path, cfg, simulated=SimulatedAnnotator.from_world(WORLD, name="simulated-mix"))
    run_scripted_reader(loop, _annotator(), 4)
    c = loop.counts()
    assert (c["scripted"], c["simulated"], c["reader"]) == (4, 2, 0) and len(loop.members) == 1
    loop.close()


def test_a_rerun_cell_replaces_the_loop_of_the_same_folder(policy, tokenizer, tmp_path):
    first = _loop(policy, tokenizer, tmp_path).start()
    second = _loop(policy, tokenizer, tmp_path)             # the cell run again in the same kernel
    assert not first.running and second.round == 0
    second.close()


def test_live_widget_clicks_write_the_store_and_the_panel_follows(policy, tokenizer, tmp_path):
    from rlhf_utils.widgets import live_loop_widget, live_panel_html

    loop = _loop(policy, tokenizer, tmp_path)
    session = loop.session("Ada")
    box = live_loop_widget(loop, session)
    panel = box.children[1]
    assert "round <span class='rlhf-live-round'>0</span>" in panel.value and "waiting for 4 more" in panel.value
    buttons = [b for b in box.children[0].children[0].children[1].children if getattr(b, "description", "") == "Start rating"]
    buttons[0].click()
    a_button = next(b for row in box.children[0].children[1].children if hasattr(row, "children")
                    for b in row.children if getattr(b, "description", "") == "A is better [1]")
    for _ in range(TINY.k):
        a_button.click()
    assert len(FeedbackStore(tmp_path / "store.jsonl").records()) == TINY.k
    assert "<span class='rlhf-live-labels'>4</span> (4 from you" in panel.value
    loop.start()
    assert loop.wait(1, timeout=120)
    box.draw()
    assert "rlhf-live-round'>1<" in panel.value and len(session.entries) == TINY.first_pairs + TINY.pairs_per_round
    summary = dict(loop.summary(), status="training", queued=9)
    assert "9 queued</b> for the next round" in live_panel_html(summary, TINY.k)
    loop.close()


def test_reader_agreement_counts_only_a_persons_strict_pairs(policy, tokenizer):
    rm = RewardModel.from_policy(policy, tokenizer, init_std=0.5, seed=1)
    pairs = [PreferencePair(p, f"it was great {i} .", f"it was bad {i} .", annotator="Ada") for i, p in
             enumerate(WORLD.prompts(6, seed=9))]
    pairs += [PreferencePair("x .", "a .", "b .", annotator="simulated"), PreferencePair("y .", "c .", "d .", tie=True,
                                                                                          annotator="Ada")]
    n, agreement = reader_agreement(pairs, rm)
    naive = [rm.raw_score([q.prompt], [q.chosen]).item() > rm.raw_score([q.prompt], [q.rejected]).item() for q in pairs[:6]]
    assert n == 6 and agreement == pytest.approx(sum(naive) / 6)
    assert reader_agreement(pairs[6:7], rm) == (0, pytest.approx(float("nan"), nan_ok=True))


def test_live_loop_config_checks_itself():
    with pytest.raises(ValueError, match="strategy"):
        LiveLoopConfig(strategy="best")
    with pytest.raises(ValueError, match="candidate_pool"):
        LiveLoopConfig(candidate_pool=4, pairs_per_round=8)
    with pytest.raises(ValueError, match="ppo_batch_size"):
        LiveLoopConfig(ppo_batch_size=33)
    with pytest.raises(TypeError, match="LiveLoopConfig.k"):
        LiveLoopConfig(k=2.5)
    assert annotators.SCRIPTED_READER.startswith("simulated")
