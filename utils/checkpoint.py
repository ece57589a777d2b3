"""Checkpoints: their content, atomic writes, safe loading, and the RNG states that make a resumed run equal an
uninterrupted one.

A checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``: a file
holding pickled objects of other classes is refused and none of its code runs. Its content
(:func:`checkpoint_content`):

- every checkpoint: ``model`` (state dict), ``model_config`` (rebuilds the model), ``epoch`` (index of the last
  finished epoch, as in ``log.jsonl``; -1 before the first), ``step`` (optimizer updates), ``args`` (the run's flags),
  ``metrics`` (validation metrics of that epoch), and the task's extras (MTL: ``au_thresholds``);
- ``last.pth`` also what a resume needs: ``optimizer``, ``scaler`` (a GradScaler's state; its initial one unless
  fp16, so that facebookresearch/mae's code resumes from our files too), ``train_state`` (the loop's
  position: next epoch, micro-batches done in it, counters), ``best`` (best value of each selection metric so far)
  and ``rng`` (every process's generator states).
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import UserError

try:  # numpy 2 moved the scalar constructor; pickles name it either way
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar


# What an enabled but unused GradScaler holds (torch's defaults): a disabled one has no state, which torch refuses to
# load into an enabled scaler such as MAE's.
IDLE_SCALER_STATE = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                     "_growth_tracker": 0}


def checkpoint_content(model_state: dict, config: dict, args: dict, epochs_done: int, step: int, metrics=None,
                       extras=None, training=None) -> dict:
    """The dict a checkpoint file holds (module docstring); ``training``: the resume entries, for ``last.pth``."""
    content = {"model": model_state, "epoch": epochs_done - 1, "step": step, "args": args, "model_config": config,
               "metrics": metrics or {}, **(extras or {})}
    if training is not None:
        content.update(training)
    return content


def save_atomic(obj, path: str) -> None:
    """``torch.save`` through :func:`utils.atomic.atomic_write`: a crash or a full disk during the write leaves the
    previous file intact."""
    try:
        with atomic_write(path, "wb") as out:
            torch.save(obj, out)
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err} (disk full, or --output-dir not "
                        f"writable?); the previous file, if any, is intact") from None


# Plain values that released checkpoints carry next to their tensors: the original CoTEX files store numpy scalar
# metrics, MAE training checkpoints an argparse.Namespace. Reconstructing these runs no code of the file's choosing.
_ALLOWED_GLOBALS = [
    _numpy_scalar,
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *{type(np.dtype(code)) for code in np.typecodes["AllFloat"] + np.typecodes["AllInteger"] + "?"},
    argparse.Namespace,
]


def load_checkpoint(path, what: str = "checkpoint", mmap: bool = False):
    """Load a checkpoint file on the CPU with ``weights_only=True`` and the allow-list above.

    Any other pickled class is refused before it is constructed (its code never runs). A file that is not a dict (a
    bare tensor), or whose ``model_config`` is not a model config, is refused too. Every failure is a one-line
    :class:`UserError` naming the file, with nothing printed before it (torch's warnings about the file are the
    error's business). ``mmap``: the tensors stay on disk until used (a look at a file's settings reads little).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{what} {path} is empty (0 bytes); it was not written completely")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            warnings.simplefilter("ignore")
            content = torch.load(path, map_location="cpu", weights_only=True,
                                 mmap=mmap and zipfile.is_zipfile(path))  # the format before torch 1.6 cannot
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:Unsupported global|unsupported GLOBAL)[^A-Za-z_]*([\w.]+)", str(err), re.I)
        if found:
            refused = (f"{what} {path} was refused: it holds a pickled {found.group(1)}, which is not on the "
                       f"allow-list of plain values (nothing in it was run); re-save just its state dict")
            raise UserError(refused) from None
        if _is_plain_pickle(path):
            raise UserError(f"{what} {path} is a plain pickle file, not a checkpoint written by torch.save") from None
        raise UserError(f"{what} {path} is not a readable checkpoint (corrupt: {_first_line(err)})") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for truncated or foreign files
        raise UserError(f"{what} {path} is not a readable checkpoint (truncated or corrupt: {_first_line(err)})") \
            from None
    check_content(content, path, what)
    return content


def check_content(content, path: str, what: str = "checkpoint") -> None:
    """A checkpoint is a dict (ours, a released file's, or a bare state dict); a ``model_config`` it carries is a
    dict that names its model. Anything else was not written by a training run: a one-line :class:`UserError`."""
    if not isinstance(content, Mapping):
        raise UserError(f"{what} {path} holds a {type(content).__name__}, not a checkpoint (a dict with the weights "
                        f"under 'model', or a state dict)")
    config = content.get("model_config")
    if config is not None and not (isinstance(config, Mapping) and isinstance(config.get("name"), str)):
        shown = type(config).__name__ if not isinstance(config, Mapping) else "dict without a model name"
        raise UserError(f"{what} {path}: its model_config is a {shown}, not a model config; the file was not "
                        f"written by this project's training")


def _is_plain_pickle(path: str) -> bool:
    """Whether the file is a pickle stream of its own rather than torch.save's zip archive or its format before 1.6
    (a pickle too, which starts with the pickled magic number 0x1950a86a20f9469cfc6c)."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    return head[:1] == b"\x80" and b"\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" not in head


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__


def capture_rng() -> dict:
    """The generator states a resumed run needs to draw the same numbers (python, numpy, torch CPU and CUDA)."""
    version, internal, gauss = random.getstate()
    state = {
        "python_version": version,
        "python": list(internal),
        "python_gauss": gauss,
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def restore_rng(state: dict) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"]), state["python_gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
