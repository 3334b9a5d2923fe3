"""Tests of rlhf_utils.config: the scale switch, device choice, seeding, artifact paths, presets."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_utils import config as C

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("RLHF_SCALE", "RLHF_CHECKPOINTS", "RLHF_FEEDBACK"):
        monkeypatch.delenv(name, raising=False)


# ---- scale -----------------------------------------------------------------------------


def test_default_scale_follows_the_hardware():
    assert C.get_scale() == ("full" if torch.cuda.is_available() else "quick")


@pytest.mark.parametrize("value,expected", [("quick", "quick"), ("full", "full"), (" FULL ", "full"), ("Quick", "quick")])
def test_env_var_picks_the_scale(monkeypatch, value, expected):
    monkeypatch.setenv("RLHF_SCALE", value)
    assert C.get_scale() == expected
    assert C.get_preset().name == expected
    assert C.get_preset() is C.PRESETS[expected]


def test_argument_beats_env_var(monkeypatch):
    monkeypatch.setenv("RLHF_SCALE", "full")
    assert C.get_scale("quick") == "quick"
    assert C.get_preset("quick").name == "quick"


@pytest.mark.parametrize("value", ["huge", "medium", "fast"])
def test_unknown_scale_is_a_clear_error(monkeypatch, value):
    with pytest.raises(ValueError, match=rf"Unknown scale '{value}'.*quick.*full"):
        C.get_scale(value)
    monkeypatch.setenv("RLHF_SCALE", value)
    with pytest.raises(ValueError, match="RLHF_SCALE"):
        C.get_preset()


# ---- device and dtype ------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_what_to_do():
    for asked in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(RuntimeError, match=r"no CUDA.*device='cpu'"):
            C.get_device(asked)


def test_cpu_device_and_default():
    assert C.get_device("cpu") == torch.device("cpu")
    assert C.get_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert C.get_device().type == expected
    assert C.get_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_and_dtype():
    device = C.get_device("cuda")
    assert device.type == "cuda"
    assert C.get_dtype(device) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


# ---- seeding ---------------------------------------------------------------------------


def _draws(generator: torch.Generator):
    return (random.random(), random.randint(0, 10**9), np.random.rand(3).tolist(),
            torch.rand(3).tolist(), torch.randint(1000, (3,)).tolist(), torch.rand(3, generator=generator).tolist())


def test_seed_everything_repeats_python_numpy_and_torch():
    first = _draws(C.seed_everything(123))
    second = _draws(C.seed_everything(123))
    other = _draws(C.seed_everything(124))
    assert first == second
    for a, b in zip(first, other):
        assert a != b


def test_seed_everything_generator_and_large_seeds():
    g = C.seed_everything(7)
    assert isinstance(g, torch.Generator) and g.initial_seed() == 7
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(7)))
    C.seed_everything(2**40 + 5)  # bigger than numpy's 32-bit seed: no error
    a = np.random.rand()
    C.seed_everything(2**40 + 5)
    assert np.random.rand() == a


def test_seeded_model_initialisation_is_repeatable():
    C.seed_everything(0)
    a = torch.nn.Linear(8, 8).weight.detach().clone()
    C.seed_everything(0)
    assert torch.equal(torch.nn.Linear(8, 8).weight, a)


# ---- artifact paths --------------------------------------------------------------------


def test_artifact_dirs_default_to_the_repo():
    assert C.checkpoints_dir() == REPO_ROOT / "checkpoints"
    assert C.feedback_dir() == REPO_ROOT / "data" / "feedback"


def test_artifact_dirs_follow_env_vars(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_CHECKPOINTS", str(tmp_path / "ck"))
    monkeypatch.setenv("RLHF_FEEDBACK", str(tmp_path / "fb"))
    assert C.checkpoints_dir() == tmp_path / "ck"
    assert C.feedback_dir() == tmp_path / "fb"
    monkeypatch.setenv("RLHF_CHECKPOINTS", "")  # empty means unset
    assert C.checkpoints_dir() == REPO_ROOT / "checkpoints"


# ---- presets ---------------------------------------------------------------------------


def test_presets_one_per_scale_with_every_config():
    assert set(C.PRESETS) == set(C.SCALES) == {"quick", "full"}
    for name, preset in C.PRESETS.items():
        assert preset.name == name
        for f in dataclasses.fields(C.Preset):
            if f.name != "name":
                value = getattr(preset, f.name)
                assert dataclasses.is_dataclass(value), f.name
                with pytest.raises(dataclasses.FrozenInstanceError):
                    setattr(value, dataclasses.fields(value)[0].name, None)


def test_every_config_field_has_a_docstring():
    """Practice 4: one config dataclass per algorithm, a docstring under every field."""
    tree = ast.parse(inspect.getsource(C))
    classes = {f.type if isinstance(f.type, str) else f.type.__name__
               for f in dataclasses.fields(C.Preset) if f.name != "name"}
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            found.add(node.name)
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    documented = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                                  and isinstance(nxt.value.value, str) and nxt.value.value.strip())
                    assert documented, f"{node.name}.{stmt.target.id} has no docstring"
    assert found == classes


def test_full_lm_is_bigger_than_quick():
    quick, full = C.PRESETS["quick"].lm, C.PRESETS["full"].lm
    assert full.n_embd * full.n_layer > quick.n_embd * quick.n_layer
    for lm in (quick, full):
        assert lm.n_embd % lm.n_head == 0


def test_one_vocabulary_for_the_rl_hyperparameters():
    """Issue 10: every config names a hyperparameter the same way (CleanRL's names), and the
    old names are gone."""
    old = {"lr", "mini_batch_size", "ppo_epochs", "cliprange", "cliprange_value", "lam", "clip_vloss"}
    for preset in C.PRESETS.values():
        for f in dataclasses.fields(C.Preset):
            if f.name == "name":
                continue
            names = {g.name for g in dataclasses.fields(getattr(preset, f.name))}
            assert not names & old, f"{f.name}: {sorted(names & old)}"
        ppo, cart = preset.ppo, preset.cartpole
        for cfg in (ppo, cart):
            assert {"learning_rate", "num_minibatches", "update_epochs", "clip_coef", "vf_clip_coef",
                    "gae_lambda", "norm_adv", "adam_eps", "vf_coef"} <= {g.name for g in dataclasses.fields(cfg)}
        assert ppo.batch_size % ppo.num_minibatches == 0
        assert (cart.num_envs * cart.num_steps) % cart.num_minibatches == 0
    quick, full = C.PRESETS["quick"], C.PRESETS["full"]
    assert (quick.ppo.batch_size // quick.ppo.num_minibatches, full.ppo.num_minibatches) == (32, 4)
    # the value loss carries its 1/2 now, so SB3's vf_coef 0.5 is our 1.0; no value clipping (SB3's default)
    assert (C.CartPoleConfig().vf_coef, C.CartPoleConfig().vf_clip_coef, C.CartPoleConfig().adam_eps) == (1.0, None, 1e-5)
    assert C.PPOConfig().norm_adv is True
