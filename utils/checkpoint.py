"""Checkpoints: atomic writes, safe loading, and the RNG states that make a resumed run equal an uninterrupted one.

A checkpoint holds only tensors and plain Python values (``model``, ``optimizer``, ``scaler``, ``epoch``, ``step``,
``args``, ``model_config``, ``metrics``, ``au_thresholds``, ``rng``), so it loads with
``torch.load(weights_only=True)``:
a file holding pickled objects of other classes is refused and none of its code runs.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile

import numpy as np
import torch

from utils.errors import UserError


def save_atomic(obj, path: str) -> None:
    """Write ``obj`` to ``path`` through a temporary file in the same folder, fsync, then ``os.replace``.

    A crash or a full disk during the write leaves the previous file intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    except OSError as err:
        raise UserError(f"cannot write checkpoint to {folder}: {err.strerror or err}; check --output-dir") from None
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(obj, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        _remove_quietly(tmp_path)
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err} (disk full?); the previous file, "
                        f"if any, is intact") from None
    except BaseException:
        _remove_quietly(tmp_path)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint safely (``weights_only=True``) on the CPU; every failure is a one-line :class:`UserError`."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); it was not written completely")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(f"checkpoint {path} holds pickled Python objects that are not allowed (refused unread, "
                            f"none of its code ran): {_unsupported_global(str(err)) or first}") from None
        raise UserError(f"checkpoint {path} is not a readable checkpoint (truncated or corrupt: {first})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is not a readable checkpoint (truncated or corrupt: {first})") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a dictionary of weights")
    return obj


def _unsupported_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return ""


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
