"""Checkpoints: Hugging Face folders written atomically and checked before they are read.

* :func:`atomic_folder` -- fill a temporary folder, then rename it into place, so a crash
  never leaves a half-written checkpoint under the real name (used for the policy, the
  reward model and the PPO trainer state alike);
* :func:`save_checkpoint` / :func:`load_checkpoint` -- a causal LM and its tokenizer
  (``save_pretrained``, safetensors), loaded through ``AutoModelForCausalLM`` /
  ``AutoTokenizer``, so a hub id such as ``"gpt2"`` works the same way on a connected
  machine. Nothing is unpickled and no remote code runs.

A trap this guards against: transformers 5's ``AutoTokenizer.from_pretrained`` on a GPT-2
folder that lacks its tokenizer files returns, without an error, a GPT-2 tokenizer with
a vocabulary of one token. :func:`check_checkpoint` names the missing files instead.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlhf_utils.lm import PAD

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MARKERS = ("config.json", "trainer_state.json", "reward_model.json", "loop_state.json")
"""A folder holding one of these is a checkpoint that :func:`atomic_folder` may replace."""


@contextmanager
def atomic_folder(path) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary folder beside ``path`` to fill, then
    renames it into place. On an error the temporary folder is removed and ``path`` is left
    as it was, so a crash never leaves a half-written folder under the real name."""
    path = Path(path).expanduser()
    if path.exists() and not (path.is_dir() and (any((path / m).is_file() for m in MARKERS)
                                                 or not any(path.iterdir()))):
        raise FileExistsError(
            f"{path} exists and is not a checkpoint folder (no {' / '.join(MARKERS)} in it): saving there would "
            "replace what it holds. Pass a new folder, or an earlier checkpoint's folder to overwrite it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():  # moved aside, not deleted: a complete folder exists at every moment
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(model, tokenizer, folder) -> None:
    """Write model and tokenizer into ``folder`` (safetensors); the tokenizer is saved with
    the model's real context length as ``model_max_length``, so ``truncation=True`` cuts
    prompts to what the model can read. Not atomic: see :func:`save_checkpoint`."""
    import copy

    from rlhf_utils.lm import context_length

    model.save_pretrained(folder)
    tokenizer = copy.copy(tokenizer)  # the caller's tokenizer is left as it was
    tokenizer.model_max_length = context_length(model)
    tokenizer.save_pretrained(folder)


def save_checkpoint(model, tokenizer, path) -> Path:
    """Save model and tokenizer as a Hugging Face folder (safetensors), atomically."""
    with atomic_folder(path) as tmp:
        write_checkpoint(model, tokenizer, tmp)
    return Path(path)


def read_json(file: Path) -> dict:
    """A JSON object from ``file``; a damaged one is a ``ValueError`` naming it."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{file} is damaged (not valid JSON: {str(err)[:80]}): save or copy the folder again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} is damaged (a JSON {type(data).__name__}, not an object): save or copy it again")
    return data


def check_safetensors(file: Path) -> None:
    """Check that a ``.safetensors`` file is whole: its header parses and its size is what the
    header describes (a truncated copy fails here, naming the file, not later in the loader)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except Exception:
            header = None
    if header is None or 8 + n + end != size:
        expected = "" if header is None else f", its header describes {8 + n + end}"
        raise ValueError(f"{file} is damaged: {size} bytes{expected} (a truncated copy or an interrupted write). "
                         "Save the checkpoint again, or copy the file again.")


def check_checkpoint(path) -> Path:
    """Check that ``path`` is a complete checkpoint folder whose files are whole; say what is
    missing or damaged if not (and what the folder is, if it is another kind of checkpoint)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {path}. Run the notebook that makes it "
            "(01 saves checkpoints/base, 03 checkpoints/sft) or pass the right path."
        )
    if (path / "reward_model.json").is_file():
        raise ValueError(f"{path} is a reward model, not a language model: load it with "
                         "rlhf_utils.reward.RewardModel.load, or pass the policy's folder (e.g. checkpoints/sft)")
    if (path / "trainer_state.json").is_file():
        raise ValueError(f"{path} is a PPO trainer state (for --resume), not a language model: the trained "
                         f"policy is in {path.name.removesuffix('-state')}")
    missing = [f for f in ("config.json", *TOKENIZER_FILES) if not (path / f).is_file()]
    index = path / "model.safetensors.index.json"
    weights = ["model.safetensors"]
    if index.is_file():
        weights = sorted(set(read_json(index).get("weight_map", {}).values()))
    missing += [w for w in weights if not (path / w).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Checkpoint folder {path} is incomplete (missing: {', '.join(missing)}). It was "
            "probably half-written or copied in part: save it again with save_checkpoint."
        )
    for f in ("config.json", *TOKENIZER_FILES):
        read_json(path / f)
    for w in weights:
        check_safetensors(path / w)
    return path


@functools.lru_cache(maxsize=1)
def hub_offline() -> str | None:
    """Why the Hugging Face hub cannot be reached (``HF_HUB_OFFLINE`` set, or no network), or
    None if it can. Asked once per process: a later call gives the same answer at once."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"no network ({host} cannot be reached: {err.strerror or err})"
    return None


def load_checkpoint(path, device=None, dtype: torch.dtype | None = None):
    """Load (model, tokenizer) from a checkpoint folder or a hub id such as ``"gpt2"``.

    A local folder is checked first (see :func:`check_checkpoint`): transformers would
    otherwise, for a GPT-2 folder without tokenizer files, quietly return a tokenizer
    with a one-token vocabulary.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_utils.config import get_device

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_checkpoint needs a folder or a hub id (str or Path), got {type(path).__name__}")
    device = get_device(device)
    local = Path(path).expanduser()
    if local.exists() or local.is_absolute() or str(path).startswith((".", "~")) or str(path).count("/") > 1:
        path = check_checkpoint(local)
    elif (why := hub_offline()) is not None:
        raise FileNotFoundError(
            f"{str(path)!r} is not a folder here, and the Hugging Face hub cannot be reached ({why}): pass the "
            "path of a local checkpoint folder instead (e.g. checkpoints/sft, written by save_checkpoint or "
            "save_pretrained), or run where the hub can be reached.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise OSError(
            f"Could not load {str(path)!r}: it is neither a checkpoint folder here nor a model the hub "
            f"serves. Underlying error: {str(err)[:300]}"
        ) from None
    except Exception as err:  # e.g. safetensors' SafetensorError, a config transformers cannot read
        raise ValueError(f"Could not load the checkpoint {str(path)!r}: {type(err).__name__}: {str(err)[:300]}. "
                         "Save it again with save_checkpoint.") from None
    if tokenizer.pad_token is None:  # GPT-2 and Llama ship without one
        tokenizer.add_special_tokens({"pad_token": PAD})
        model.resize_token_embeddings(len(tokenizer))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{model.get_input_embeddings().num_embeddings}: they do not belong together")
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer
