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

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlhf_utils.lm import PAD

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@contextmanager
def atomic_folder(path) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary folder beside ``path`` to fill, then
    renames it into place. On an error the temporary folder is removed and ``path`` is left
    as it was, so a crash never leaves a half-written folder under the real name."""
    path = Path(path)
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


def check_checkpoint(path) -> Path:
    """Check that ``path`` is a complete checkpoint folder; say what is missing if not."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {path}. Run the notebook that makes it "
            "(01 saves checkpoints/base, 03 checkpoints/sft) or pass the right path."
        )
    missing = [f for f in ("config.json", *TOKENIZER_FILES) if not (path / f).is_file()]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing += sorted(s for s in shards if not (path / s).is_file())
    elif not (path / "model.safetensors").is_file():
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"Checkpoint folder {path} is incomplete (missing: {', '.join(missing)}). It was "
            "probably half-written or copied in part: save it again with save_checkpoint."
        )
    return path


def load_checkpoint(path, device=None, dtype: torch.dtype | None = None):
    """Load (model, tokenizer) from a checkpoint folder or a hub id such as ``"gpt2"``.

    A local folder is checked first (see :func:`check_checkpoint`): transformers would
    otherwise, for a GPT-2 folder without tokenizer files, quietly return a tokenizer
    with a one-token vocabulary.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_utils.config import get_device

    device = get_device(device)
    if Path(path).exists() or Path(path).is_absolute() or str(path).startswith((".", "~")):
        check_checkpoint(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise OSError(
            f"Could not load {path!r}: it is neither a checkpoint folder here nor a model the hub "
            f"could serve (offline?). Underlying error: {err}"
        ) from None
    if tokenizer.pad_token is None:  # GPT-2 and Llama ship without one
        tokenizer.add_special_tokens({"pad_token": PAD})
        model.resize_token_embeddings(len(tokenizer))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{model.get_input_embeddings().num_embeddings}: they do not belong together")
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer
