"""Bad inputs across the public API and the command lines (issue 13), table-driven: each case
is an input and the exact error type it must raise, with a phrase of its message. Every error
names the argument and the value, and says what to pass instead; none comes from deep inside
numpy, torch or transformers, and none is a silently wrong result.

The closing table (``CLI_CASES``) runs both command lines in-process: every error is one line
on stderr and a non-zero exit. ``test_ppo_steps_0_leaves_checkpoints_ppo_untouched`` runs the
real ``python -m rlhf_utils.ppo`` and checks a user's ``checkpoints/ppo`` survives it byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhf_utils import checkpoints, config as C, feedback as fb, lm
from rlhf_utils.rating import PairwiseSession, ScoreSession
from rlhf_utils.reward import HEAD_FILE, META_FILE, RewardModel
from rlhf_utils.widgets import rating_widget, show
from rlhf_utils.world import World

NAN = float("nan")
P = ["i watched this film ."]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A tiny model and tokenizer, a store, and checkpoint folders (good, damaged, foreign)."""
    tmp = tmp_path_factory.mktemp("bad")
    world = World(0)
    tok = lm.train_tokenizer(world.corpus(300))
    model = lm.build_model(C.LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64), tok).eval()
    good = checkpoints.save_checkpoint(model, tok, tmp / "sft")
    truncated = checkpoints.save_checkpoint(model, tok, tmp / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    broken_json = checkpoints.save_checkpoint(model, tok, tmp / "broken_json")
    (broken_json / "config.json").write_text('{"model_type": "gpt2", ')
    reward = RewardModel.from_policy(model, tok).save(tmp / "reward")
    bad_head = RewardModel.from_policy(model, tok).save(tmp / "bad_head")
    (bad_head / HEAD_FILE).write_bytes((bad_head / HEAD_FILE).read_bytes()[:-7])
    nan_gain = RewardModel.from_policy(model, tok).save(tmp / "nan_gain")
    meta = json.loads((nan_gain / META_FILE).read_text())
    (nan_gain / META_FILE).write_text(json.dumps({**meta, "gain": NAN}))
    user = tmp / "my_documents"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    (tmp / "a_file").write_text("x")
    store = fb.FeedbackStore(tmp / "ratings.jsonl")
    session = PairwiseSession([("p .", "a .", "b .")], tmp / "session.jsonl", repeat_every=0)
    score = ScoreSession([("p .", "a .")], tmp / "score.jsonl")
    return SimpleNamespace(tmp=tmp, world=world, tok=tok, model=model, good=good, truncated=truncated,
                           broken_json=broken_json, reward=reward, bad_head=bad_head, nan_gain=nan_gain,
                           user=user, store=store, session=session, score=score)


@contextlib.contextmanager
def _offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    checkpoints.hub_offline.cache_clear()
    try:
        yield
    finally:
        os.environ.pop("HF_HUB_OFFLINE") if old is None else os.environ.__setitem__("HF_HUB_OFFLINE", old)
        checkpoints.hub_offline.cache_clear()


def _load_offline(c, name):
    with _offline():
        return checkpoints.load_checkpoint(name)


def _nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"x": value}
    return value


def _sample(c, prompts=P, n=5, **kw):
    return lm.sample(c.model, c.tok, prompts, n, **kw)


def _auto_seq(c):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(c.reward)


def _gpt2_seq(c):
    from transformers import GPT2ForSequenceClassification

    return GPT2ForSequenceClassification.from_pretrained(c.reward)


#: (case id, the call, the exception type it must raise, a phrase of the message)
CASES = [
    # ---- configs: checked when built, naming the field, the value and the default ----------
    ("ppo steps 0", lambda c: C.PPOConfig(steps=0), ValueError, "PPOConfig.steps=0: must be at least 1"),
    ("ppo steps -1", lambda c: C.PPOConfig(steps=-1), ValueError, "PPOConfig.steps=-1"),
    ("ppo batch_size 0", lambda c: C.PPOConfig(batch_size=0), ValueError, "PPOConfig.batch_size=0"),
    ("ppo num_minibatches 0", lambda c: C.PPOConfig(num_minibatches=0), ValueError, "num_minibatches=0"),
    ("ppo update_epochs 0", lambda c: C.PPOConfig(update_epochs=0), ValueError, "update_epochs=0"),
    ("ppo clip_coef < 0", lambda c: C.PPOConfig(clip_coef=-0.2), ValueError, "clip_coef=-0.2: must be > 0"),
    ("ppo minibatches do not divide", lambda c: C.PPOConfig(num_minibatches=3), ValueError,
     "does not divide batch_size=64"),
    ("ppo accumulation does not divide", lambda c: C.PPOConfig(gradient_accumulation_steps=3), ValueError,
     "gradient_accumulation_steps=3 does not divide the minibatch"),
    ("ppo lr nan", lambda c: C.PPOConfig(learning_rate=NAN), ValueError, "learning_rate=nan: must be a finite"),
    ("ppo steps float", lambda c: C.PPOConfig(steps=1.5), TypeError, "steps=1.5: must be a whole number"),
    ("ppo steps str", lambda c: C.PPOConfig(steps="60"), TypeError, "not str"),
    ("ppo steps bool", lambda c: C.PPOConfig(steps=True), TypeError, "not bool"),
    ("ppo flag str", lambda c: C.PPOConfig(anneal_lr="yes"), TypeError, "must be True or False"),
    ("ppo kl estimator", lambda c: C.PPOConfig(kl_estimator="k4"), ValueError, "must be one of 'k1', 'k2', 'k3'"),
    ("ppo gamma > 1", lambda c: C.PPOConfig(gamma=1.5), ValueError, "gamma=1.5: is outside [0, 1]"),
    ("ppo vf_clip 0", lambda c: C.PPOConfig(vf_clip_coef=0), ValueError, "vf_clip_coef=0: must be > 0; or None"),
    ("lm heads", lambda c: C.LMConfig(n_embd=10, n_head=3), ValueError, "not a multiple of n_head=3"),
    ("lm dropout", lambda c: C.LMConfig(dropout=1.5), ValueError, "dropout=1.5: is outside [0, 1]"),
    ("cartpole minibatches", lambda c: C.CartPoleConfig(num_minibatches=3), ValueError,
     "does not divide the batch of num_envs * num_steps"),
    ("cartpole hidden", lambda c: C.CartPoleConfig(hidden_sizes=(64, 0)), ValueError, "hidden_sizes[1]=0"),
    ("reward eval_fraction", lambda c: C.RewardConfig(eval_fraction=1.0), ValueError, "is outside (0, 1)"),
    ("reward batch 0", lambda c: C.RewardConfig(batch_size=0), ValueError, "RewardConfig.batch_size=0"),
    ("feedback temperature", lambda c: C.FeedbackConfig(temperature=0), ValueError, "temperature=0: must be > 0"),
    ("world reviews 0", lambda c: C.WorldConfig(n_train_reviews=0), ValueError, "n_train_reviews=0"),
    ("sft tokens 0", lambda c: C.SFTConfig(max_new_tokens=0), ValueError, "SFTConfig.max_new_tokens=0"),
    ("dpo beta 0", lambda c: C.DPOConfig(beta=0), ValueError, "DPOConfig.beta=0: must be > 0"),
    ("device gpu", lambda c: C.get_device("gpu"), ValueError, "device='gpu': is not a device; pass 'cpu'"),
    ("scale huge", lambda c: C.get_scale("huge"), ValueError, "Unknown scale 'huge'"),
    ("seed float", lambda c: C.seed_everything(1.5), TypeError, "seed=1.5: must be a whole number"),
    ("threads 0", lambda c: C.seed_everything(0, threads=0), ValueError, "threads=0: must be at least 1"),
    # ---- lm: checked at the top of each public function --------------------------------------
    ("sample top_p 0", lambda c: _sample(c, top_p=0), ValueError, "top_p=0: is outside (0, 1]"),
    ("sample temperature nan", lambda c: _sample(c, temperature=NAN), ValueError, "temperature=nan"),
    ("sample temperature 0", lambda c: _sample(c, temperature=0), ValueError, "use greedy=True"),
    ("sample a string", lambda c: _sample(c, prompts="i watched this film ."), TypeError, "wrap it in a list"),
    ("sample None prompt", lambda c: _sample(c, prompts=[None]), TypeError, "prompts[0] is NoneType"),
    ("sample no prompts", lambda c: _sample(c, prompts=[]), ValueError, "prompts is empty"),
    ("sample top_k < 0", lambda c: _sample(c, top_k=-1), ValueError, "top_k=-1: must be at least 0"),
    ("sample 0 tokens", lambda c: _sample(c, n=0), ValueError, "max_new_tokens=0"),
    ("sample past context", lambda c: _sample(c, n=60), ValueError, "exceed the model's context of 64"),
    ("sample generator", lambda c: _sample(c, generator=123), TypeError, "must be a torch.Generator"),
    ("sample model None", lambda c: lm.sample(None, c.tok, P, 5), TypeError, "model must be a torch language model"),
    ("train_lm a string", lambda c: lm.train_lm(c.model, c.tok, "abc", 1, 1, 1e-3, progress=False), ValueError,
     "non-empty list of (prompt, completion)"),
    ("train_lm bare texts", lambda c: lm.train_lm(c.model, c.tok, ["ab"], 1, 1, 1e-3, progress=False), TypeError,
     "examples[0]='ab' is not a (prompt, completion) pair"),
    ("train_lm steps 0", lambda c: lm.train_lm(c.model, c.tok, [("", "a .")], 0, 1, 1e-3, progress=False),
     ValueError, "steps=0"),
    ("train_lm too long", lambda c: lm.train_lm(c.model, c.tok, [("", "the " * 70)], 1, 1, 1e-3, progress=False),
     ValueError, "more than the model's context of 64 tokens"),
    ("perplexity a string", lambda c: lm.perplexity(c.model, c.tok, "i watched"), TypeError, "wrap it in a list"),
    ("tokenizer a string", lambda c: lm.train_tokenizer("abc"), TypeError, "texts must be a list"),
    ("continuations mismatch", lambda c: lm.continuation_logprobs(c.model, c.tok, P, ["a", "b"]), ValueError,
     "1 prompts but 2 continuations"),
    ("build_model dict", lambda c: lm.build_model({"n_layer": 2}, c.tok), TypeError, "must be an LMConfig"),
    # ---- world -------------------------------------------------------------------------------
    ("gold a string", lambda c: c.world.gold_rewards("a string"), TypeError, "wrap it in a list"),
    ("gold no prompts", lambda c: c.world.gold_rewards(["it was great ."], prompts=[]), ValueError,
     "1 completions but 0 prompts"),
    ("gold int", lambda c: c.world.gold_reward(5), TypeError, "completion must be a str"),
    ("prompts -1", lambda c: c.world.prompts(-1), ValueError, "n=-1: must be at least 0"),
    ("prompts float", lambda c: c.world.prompts(1.5), TypeError, "n=1.5: must be a whole number"),
    ("world seed -1", lambda c: World(-1), ValueError, "World seed=-1"),
    ("world defect typo", lambda c: World(0, {None: 0.5, "typo": 0.5}), ValueError, "unknown defect 'typo'"),
    ("world defects sum", lambda c: World(0, {None: 0.5}), ValueError, "must sum to 1"),
    ("grammatical list", lambda c: c.world.is_grammatical(["a"]), TypeError, "for a list of texts use"),
    # ---- the store: the writer refuses what JSON cannot carry, naming the field ------------------
    ("record seconds nan", lambda c: fb.pair_record("p", "a", "b", "a", seconds=NAN), ValueError,
     "field 'seconds' is nan: JSON has no NaN"),
    ("record seconds inf", lambda c: fb.pair_record("p", "a", "b", "a", seconds=math.inf), ValueError,
     "'seconds' is inf"),
    ("record a set", lambda c: fb.pair_record("p", "a", "b", "a", tags={1, 2}), TypeError,
     "field 'tags' is a set"),
    ("record numpy int", lambda c: fb.pair_record("p", "a", "b", "a", position=np.int64(3)), TypeError,
     "field 'position' is a int64"),
    ("record surrogate", lambda c: fb.pair_record("p\ud800", "a", "b", "a"), ValueError,
     "field 'prompt' holds a lone surrogate"),
    ("record int key", lambda c: fb.pair_record("p", "a", "b", "a", source={1: "x"}), TypeError,
     "JSON keys are strings"),
    ("record too deep", lambda c: fb.pair_record("p", "a", "b", "a", source=_nested(40)), ValueError,
     "nested more than 32 levels"),
    ("score float", lambda c: fb.score_record("p", "a", 3.0), ValueError, "field 'score' is 3.0"),
    ("score bool", lambda c: fb.score_record("p", "a", True), ValueError, "field 'score' is True"),
    ("store int path", lambda c: fb.FeedbackStore(123), TypeError, "needs a file path"),
    ("append a string", lambda c: c.store.append_many("abc"), TypeError, "needs a list of records"),
    ("append non-record", lambda c: c.store.append({"a": 1}), ValueError, "record 0 is not written"),
    ("load a folder", lambda c: fb.load_records(c.tmp), IsADirectoryError, "is a folder, not a feedback store"),
    ("live a string", lambda c: fb.live_judgements("abc"), TypeError, "needs a list of records"),
    ("export a string", lambda c: fb.to_preference_dataset("abc"), TypeError, "needs a list of judgements"),
    ("preferences to a folder", lambda c: fb.write_preferences(c.tmp, []), IsADirectoryError, "is a folder"),
    # ---- rating sessions and widgets -----------------------------------------------------------
    ("pairs a string", lambda c: PairwiseSession("abc", c.tmp / "r.jsonl"), TypeError,
     "pairs must be a list of (prompt, completion_a, completion_b)"),
    ("pairs of two", lambda c: PairwiseSession([("a", "b")], c.tmp / "r.jsonl"), TypeError, "pairs[0] is ('a', 'b')"),
    ("pairs int", lambda c: PairwiseSession([("p", 1, "b")], c.tmp / "r.jsonl"), TypeError, "all str"),
    ("calibration gold", lambda c: PairwiseSession([], c.tmp / "r.jsonl", calibration=[("q", "a", "b", "x")]),
     ValueError, "calibration gold must be 'a' or 'b'"),
    ("sources short", lambda c: PairwiseSession([("p", "a", "b"), ("p", "c", "d")], c.tmp / "r.jsonl",
                                                 sources=[{}]), ValueError, "got 1 item(s) for 2 pair(s)"),
    ("repeat_every -1", lambda c: PairwiseSession([], c.tmp / "r.jsonl", repeat_every=-1), ValueError,
     "repeat_every=-1"),
    ("score items of three", lambda c: ScoreSession([("p", "a", "b")], c.tmp / "s.jsonl"), TypeError,
     "items[0] is ('p', 'a', 'b')"),
    ("rater name int", lambda c: c.session.start(5), TypeError, "the rater's name must be a str"),
    ("rater name control", lambda c: c.session.start("\x00"), ValueError, "not printable text"),
    ("go_to a string", lambda c: c.session.go_to("1"), TypeError, "index='1': must be a whole number"),
    ("verdict lower case", lambda c: c.session.choose("a"), ValueError, "verdict 'a' not one of"),
    ("score True", lambda c: c.score.score(True), ValueError, "use 1-5, or None"),
    ("widget of a string", lambda c: rating_widget("x"), TypeError, "needs a rating session"),
    ("show None", lambda c: show(None), TypeError, "needs a rating session"),
    # ---- checkpoints ---------------------------------------------------------------------------
    ("truncated safetensors", lambda c: checkpoints.load_checkpoint(c.truncated), ValueError,
     "model.safetensors is damaged"),
    ("damaged config", lambda c: checkpoints.load_checkpoint(c.broken_json), ValueError, "config.json is damaged"),
    ("reward as policy", lambda c: checkpoints.load_checkpoint(c.reward), ValueError,
     "is a reward model, not a language model"),
    ("hub id offline", lambda c: _load_offline(c, "someone/some-model"), FileNotFoundError,
     "is not a folder here, and the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set)"),
    ("typo'd folder offline", lambda c: _load_offline(c, "checkpoints/sfft"), FileNotFoundError,
     "pass the path of a local checkpoint folder"),
    ("load_checkpoint None", lambda c: checkpoints.load_checkpoint(None), TypeError, "needs a folder or a hub id"),
    ("save over a user folder", lambda c: checkpoints.save_checkpoint(c.model, c.tok, c.user), FileExistsError,
     "is not a checkpoint folder"),
    ("save over a file", lambda c: checkpoints.save_checkpoint(c.model, c.tok, c.tmp / "a_file"), FileExistsError,
     "would replace what it holds"),
    ("policy as reward", lambda c: RewardModel.load(c.good), ValueError, "is not a reward model"),
    ("reward head damaged", lambda c: RewardModel.load(c.bad_head), ValueError, "reward_head.safetensors is damaged"),
    ("reward gain nan", lambda c: RewardModel.load(c.nan_gain), ValueError, "gain=nan"),
    ("reward via AutoModelForSequenceClassification", _auto_seq, ValueError, "rlhf_utils.reward.RewardModel"),
    ("reward via GPT2ForSequenceClassification", _gpt2_seq, OSError, "no file named model.safetensors"),
]


@pytest.mark.parametrize("call, error, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(ctx, call, error, phrase):
    with pytest.raises(Exception) as caught:
        call(ctx)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert phrase in str(caught.value)


def test_the_table_is_big_enough_and_every_error_is_short():
    assert len(CASES) + len(CLI_CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------
# Command lines: one line on stderr, a non-zero exit, nothing written
# --------------------------------------------------------------------------------------


def _ppo(c, *args):
    return ["ppo", "--policy", str(c.good), "--reward", "gold", "--device", "cpu", *args]


#: (case id, argv (first word: which command line), exit status, a phrase of the one line)
CLI_CASES = [
    ("ppo --steps 0", lambda c: _ppo(c, "--steps", "0", "--out", str(c.tmp / "out")), 2,
     "PPOConfig.steps=0: must be at least 1"),
    ("ppo --steps -1", lambda c: _ppo(c, "--steps", "-1"), 2, "PPOConfig.steps=-1"),
    ("ppo --steps abc", lambda c: _ppo(c, "--steps", "abc"), 2, "argument --steps: invalid int value: 'abc'"),
    ("ppo --lora-r -1", lambda c: _ppo(c, "--lora-r", "-1"), 2, "lora_r=-1"),
    ("ppo --save-every -1", lambda c: _ppo(c, "--save-every", "-1"), 2, "--save-every=-1"),
    ("ppo --device gpu", lambda c: ["ppo", "--device", "gpu"], 2, "device='gpu': is not a device"),
    ("ppo --scale huge", lambda c: ["ppo", "--scale", "huge"], 2, "Unknown scale 'huge'"),
    ("ppo --out a user folder", lambda c: _ppo(c, "--out", str(c.user)), 2,
     "exists and is not a PPO policy folder"),
    ("ppo --out = --policy", lambda c: _ppo(c, "--out", str(c.good)), 2, "is the --policy folder"),
    ("ppo --policy missing", lambda c: ["ppo", "--policy", str(c.tmp / "nope" / "sft"), "--reward", "gold"], 2,
     "No checkpoint folder at"),
    ("ppo --reward a policy", lambda c: ["ppo", "--policy", str(c.good), "--reward", str(c.good),
                                          "--out", str(c.tmp / "out2")], 2, "is not a reward model"),
    ("ppo --policy damaged", lambda c: _ppo(c, "--policy", str(c.truncated), "--out", str(c.tmp / "out3")), 2,
     "is damaged"),
    ("ppo unknown flag", lambda c: ["ppo", "--stepz", "3"], 2, "unrecognized arguments: --stepz 3"),
    ("course --timeout -1", lambda c: ["course", "--timeout", "-1"], 2, "--timeout -1: give the seconds"),
    ("course --seed abc", lambda c: ["course", "--seed", "abc"], 2, "argument --seed: invalid int value"),
    ("course --out a file", lambda c: ["course", "--out", str(c.tmp / "a_file")], 2, "is a file"),
    ("course --only 99", lambda c: ["course", "--only", "99"], 2, "no notebook matches '99'"),
    ("course --results missing", lambda c: ["course", "--results", str(c.tmp / "nope")], 2, "No summary.json"),
]


@pytest.mark.parametrize("argv, status, phrase", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_command_line_error_is_one_line_and_nonzero(ctx, argv, status, phrase, capsys, monkeypatch):
    from rlhf_utils import course, ppo_cli

    monkeypatch.setenv("RLHF_CHECKPOINTS", str(ctx.tmp / "ck"))
    which, *args = argv(ctx)
    try:
        code = (ppo_cli.main if which == "ppo" else course.main)(args)
    except SystemExit as stop:  # argparse's own exit, or the PPO command line's
        code = stop.code
    err = capsys.readouterr().err
    assert code == status, err
    assert err.endswith("\n") and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # (a progress bar of work already done may come before it)
    assert line.startswith(f"rlhf_utils.{which}: error: ") and phrase in line, err
    assert sum("error" in x for x in err.splitlines()) == 1, err
    assert not (ctx.tmp / "out").exists() and (ctx.user / "thesis.txt").read_text() == "years of work"


def test_debug_shows_the_traceback(ctx, monkeypatch):
    from rlhf_utils import ppo_cli

    with pytest.raises(ValueError, match="PPOConfig.steps=0"):
        ppo_cli.main(_ppo(ctx, "--steps", "0", "--debug")[1:])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ppo_steps_0_leaves_checkpoints_ppo_untouched(ctx, tmp_path):
    """The real ``python -m rlhf_utils.ppo --steps 0`` (and -1): exit 2, one line, and the
    user's ``checkpoints/ppo`` and ``checkpoints/sft`` exactly as they were."""
    ck = tmp_path / "checkpoints"
    checkpoints.save_checkpoint(ctx.model, ctx.tok, ck / "sft")
    checkpoints.save_checkpoint(ctx.model, ctx.tok, ck / "ppo")  # "an earlier PPO run" the user keeps
    (ck / "ppo" / "value_head.safetensors").write_bytes((ctx.good / "model.safetensors").read_bytes())
    before = {name: _tree(ck / name) for name in ("sft", "ppo")}
    env = {**os.environ, "RLHF_CHECKPOINTS": str(ck), "RLHF_SCALE": "quick"}
    for steps in ("0", "-1"):
        done = subprocess.run([sys.executable, "-m", "rlhf_utils.ppo", "--reward", "gold", "--steps", steps],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (f"rlhf_utils.ppo: error: PPOConfig.steps={steps}: must be at least 1; "
                                       "e.g. PPOConfig(steps=60) (the default)")
        assert done.stdout == ""
    assert {name: _tree(ck / name) for name in ("sft", "ppo")} == before
    assert sorted(p.name for p in ck.iterdir()) == ["ppo", "sft"]  # no state folder, no temporary folder


def test_resume_of_a_finished_run_trains_nothing_and_keeps_the_policy(ctx, tmp_path, capsys):
    """``--resume`` with ``--steps`` already reached: exit 0, says so, ``--out`` byte-identical."""
    from rlhf_utils import ppo_cli

    args = ["--scale", "quick", "--policy", str(ctx.good), "--reward", "gold", "--out", str(tmp_path / "ppo"),
            "--save-every", "1", "--device", "cpu", "--steps", "1"]
    assert ppo_cli.main(args) == 0
    before = _tree(tmp_path / "ppo")
    capsys.readouterr()
    assert ppo_cli.main(args + ["--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert _tree(tmp_path / "ppo") == before


# --------------------------------------------------------------------------------------
# What the fixes are for, checked directly
# --------------------------------------------------------------------------------------


def test_saved_tokenizers_carry_the_models_real_context_length(ctx):
    from transformers import AutoTokenizer

    assert ctx.tok.model_max_length == 10_000  # the in-memory tokenizer is left as it was
    assert AutoTokenizer.from_pretrained(ctx.good).model_max_length == 64
    assert RewardModel.load(ctx.reward).tokenizer.model_max_length == 64


def test_a_standard_class_cannot_silently_misread_the_reward_folder(ctx):
    """Before: ``AutoModelForSequenceClassification`` loaded the folder with a random ``score``
    head and no error. Now no transformers class opens it; RewardModel.load does, exactly."""
    config = json.loads((ctx.reward / "config.json").read_text())
    assert config["model_type"] == "rlhf_utils.reward.RewardModel" and config["architectures"] == ["RLHFRewardModel"]
    assert not (ctx.reward / "model.safetensors").exists()
    for load in (_auto_seq, _gpt2_seq):
        with pytest.raises((ValueError, OSError)):
            load(ctx)
    rm = RewardModel.from_policy(ctx.model, ctx.tok, init_std=0.3)
    again = RewardModel.load(rm.save(ctx.tmp / "exact"))
    assert torch.equal(again.score(P, ["it was great ."]), rm.score(P, ["it was great ."]))


def test_offline_is_detected_once(monkeypatch):
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(checkpoints.socket, "create_connection",
                        lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError(101, "Network is unreachable")))
    checkpoints.hub_offline.cache_clear()
    try:
        assert "no network" in checkpoints.hub_offline()
        assert "no network" in checkpoints.hub_offline()
        assert len(calls) == 1  # asked once per process
    finally:
        checkpoints.hub_offline.cache_clear()


def test_empty_completions_show_as_empty_and_are_never_calibration_items(tmp_path):
    cal = [("c1 .", "", "it was great .", "b"), ("c2 .", "it was bad .", "it was bad .", "a"),
           ("c3 .", "it was great .", "it was awful .", "a")]
    s = PairwiseSession([("p .", "", "it was fine .")], tmp_path / "r.jsonl", calibration=cal, repeat_every=0)
    assert [e.role for e in s.entries] == ["calibration", "item"]  # only c3 is a calibration pair
    assert "2 calibration pair(s) dropped" in s.message
    s.start()
    s.choose("A")
    view = s.view()
    assert "(empty)" in (view["left"] + view["right"])
    score = ScoreSession([("p .", "  ")], tmp_path / "s.jsonl")
    score.start()
    assert "(empty)" in score.view()["completion"]


def test_error_messages_never_come_from_deep_inside():
    """No case's message is a raw numpy/torch/transformers one (they do not name our argument)."""
    raw = re.compile(r"index \d+ is out of bounds|not enough values to unpack|object has no attribute|"
                     r"NoneType' object|Expected one of cpu|SafetensorError|RecursionError")
    assert not [c[3] for c in CASES if raw.search(c[3])]
