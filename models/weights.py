"""Reading checkpoint files, fitting their state dicts to our modules, rebuilding models from saved configs.

Every loader in ``models/`` goes through here, so all checkpoint formats fail the same way: a file that is not a
checkpoint, or a state dict of another model or size, is a :class:`UserError` that names the file and lists the
missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from utils.checkpoint import load_checkpoint
from utils.errors import UserError

StateDict = dict[str, torch.Tensor]


def read_checkpoint(source, what: str = 'checkpoint') -> tuple[object, str]:
    """Return ``(content, name)`` of a checkpoint given as a path or as an already loaded object.

    Files are read with ``weights_only=True`` on the CPU. Anything unreadable is a UserError naming the file.
    """
    if isinstance(source, Mapping):
        return source, f'<in-memory {what}>'
    path = os.fspath(source)
    return load_checkpoint(path, what), path


def is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def extract_state_dict(checkpoint, name: str, wrapper_keys: Iterable[str] = ('model', 'state_dict')) -> StateDict:
    """The state dict inside ``checkpoint``: under the first of ``wrapper_keys`` present, or the object itself."""
    if isinstance(checkpoint, Mapping):
        for key in wrapper_keys:
            if key in checkpoint and is_state_dict(checkpoint[key]):
                return dict(checkpoint[key])
    if is_state_dict(checkpoint):
        return dict(checkpoint)
    found = ', '.join(map(str, list(checkpoint)[:8])) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise UserError(f'{name} holds no state dict (expected one under {"/".join(wrapper_keys)} or a plain state dict; '
                    f'found {found})')


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    """Remove ``prefix`` when every key has it (``module.`` from DataParallel/DDP saves)."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _preview(items: list[str], shown: int = 4) -> str:
    more = f', ... +{len(items) - shown} more' if len(items) > shown else ''
    return ', '.join(items[:shown]) + more


def describe_mismatch(missing: list[str], unexpected: list[str],
                      mismatched: list[tuple[str, torch.Size, torch.Size]]) -> str:
    """One line: counts and the first few of each kind of disagreement between a checkpoint and a model."""
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing keys ({_preview(missing)})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected keys ({_preview(unexpected)})')
    if mismatched:
        shapes = [f'{key} checkpoint {tuple(theirs)} vs model {tuple(ours)}' for key, theirs, ours in mismatched]
        parts.append(f'{len(mismatched)} shape mismatches ({_preview(shapes)})')
    return '; '.join(parts)


def compare_keys(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                 may_be_missing: Callable[[str], bool] = lambda key: False):
    """(missing, unexpected, mismatched) of ``state`` against ``model_state``; BatchNorm counters may be missing."""
    missing = [key for key in model_state
               if key not in state and not key.endswith('num_batches_tracked') and not may_be_missing(key)]
    unexpected = [key for key in state if key not in model_state]
    mismatched = [(key, state[key].shape, model_state[key].shape)
                  for key in state if key in model_state and state[key].shape != model_state[key].shape]
    return missing, unexpected, mismatched


def load_exactly(module: nn.Module, state: StateDict, name: str, what: str) -> int:
    """Load a state dict that must match ``module`` key for key and shape for shape; return the tensor count."""
    own = module.state_dict()
    missing, unexpected, mismatched = compare_keys(own, state)
    if missing or unexpected or mismatched:
        raise UserError(f'{name} does not fit this {what}: {describe_mismatch(missing, unexpected, mismatched)}; '
                        'check the model type and size it was trained with')
    check_finite(state, name)
    # old files may lack BatchNorm's num_batches_tracked; keep ours (it does not change eval outputs)
    complete = {**{key: value for key, value in own.items() if key not in state}, **state}
    module.load_state_dict(complete, strict=True)
    return len(state)


def check_finite(state: Mapping[str, torch.Tensor], name: str) -> None:
    """Weights holding NaN or infinity would predict NaN: a one-line error naming the file and the tensors."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(f'{name}: {len(bad)} weight tensors hold NaN or infinite values ({_preview(bad)}); the run '
                        'that saved it diverged; use an earlier checkpoint')


def constructor_arguments(cls: type, config: Mapping) -> dict:
    """Constructor arguments of ``cls`` from a saved model config (plain values, possibly with a 'name' entry)."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {'self'}
    arguments = {key: value for key, value in config.items() if key != 'name'}
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise UserError(f'model config for {cls.__name__} has unknown entries {unknown}; '
                        f'expected some of {sorted(accepted)}')
    return arguments
