"""Hookpoints: where in a language model an SAE reads, how to hook there, and the forward that stops after them.

A hookpoint is a module path as `model.named_modules()` spells it (`model.layers.15`, `transformer.h.6.mlp`); the
activation is the module's output, or its first element when the module returns a tuple. A module's input (for a
block, the residual stream before it) is spelled with `INPUT_SUFFIX`: `model.layers.15.input`.
"""

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from transformers.utils import logging

from .errors import HookpointError

logger = logging.get_logger(__name__)

# The one spelling of a module's input: `model.layers.15.input` is the residual stream entering block 15.
INPUT_SUFFIX = ".input"


class Hookpoint(NamedTuple):
    """A resolved hookpoint: the module, its path in `named_modules()`, and whether its input is meant."""

    module: nn.Module
    path: str
    is_input: bool


def resolve_hookpoints(model: nn.Module, hookpoints: Iterable[str]) -> dict[str, Hookpoint]:
    """
    Map each hookpoint to its module, or raise `HookpointError` naming the closest valid spellings. A path relative
    to `model.base_model` (`layers.3`, as sparsify writes them) resolves too.

    >>> resolve_hookpoints(lm, ["model.layers.3", "model.layers.4.input"])["model.layers.4.input"].is_input
    True
    """
    resolved, missing = {}, []
    for name in [hookpoints] if isinstance(hookpoints, str) else hookpoints:  # one name, not its letters
        found = _find_module(model, name)
        is_input = found is None and name.endswith(INPUT_SUFFIX)
        found = _find_module(model, name.removesuffix(INPUT_SUFFIX)) if is_input else found
        if found is None:
            missing.append(name)
        else:
            resolved[name] = Hookpoint(found[1], found[0], is_input)
    if missing:
        names = [name for name, _ in model.named_modules() if name]
        hints = "; ".join(f"`{n}`: closest are {closest_hookpoints(model, n)}" for n in missing)
        raise HookpointError(
            f"Hookpoints {missing} are not modules of {type(model).__name__} ({hints}). A hookpoint is a module path "
            f"as `model.named_modules()` spells it, e.g. `{names[-1]}`, optionally followed by `{INPUT_SUFFIX}` for "
            "the module's input."
        )
    return resolved


def closest_hookpoints(model: nn.Module, name: str) -> list[str]:
    """The valid spellings (module paths, and those with `INPUT_SUFFIX`) closest to `name`, closest first."""
    paths = [path for path, _ in model.named_modules() if path]
    return difflib.get_close_matches(name, paths + [path + INPUT_SUFFIX for path in paths], 5, 0.5)


def not_an_activation(hookpoint: Hookpoint) -> str | None:
    """Why what an SAE would read or replace at `hookpoint` is not one activation per token, or None when it is: a
    container of modules never runs itself, and a rotary embedding returns its position tables (cos, sin)."""
    module = hookpoint.module
    if isinstance(module, nn.ModuleList | nn.ModuleDict):
        return f"is a {type(module).__name__}, a container that never runs itself, so nothing would be hooked"
    if not hookpoint.is_input and ("Rotary" in type(module).__name__ or hasattr(module, "inv_freq")):
        return (
            f"is a rotary embedding ({type(module).__name__}): its output is the cos / sin tables of the positions, "
            "the same for every text, not hidden states, and an SAE there would replace them"
        )
    return None


def _find_module(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    prefix = getattr(model, "base_model_prefix", "")
    if getattr(model, "base_model", model) is not model:
        candidates = [name, f"{prefix}.{name}"]  # a name relative to the base model, given a model with a head
    else:
        candidates = [name, name.removeprefix(f"{prefix}.")]  # a head model's spelling, given the bare base model
    for path in candidates:
        try:
            return (path, model.get_submodule(path)) if path else None
        except AttributeError:
            continue
    return None


def hookpoint_width(model: nn.Module, hookpoint: Hookpoint) -> int | None:
    """The activation width if known without running the model (linear, norm, decoder block), else `None`."""
    module = hookpoint.module
    if isinstance(module, nn.Linear):
        return module.in_features if hookpoint.is_input else module.out_features
    weight = getattr(module, "weight", None)
    if "Norm" in type(module).__name__ and isinstance(weight, Tensor) and weight.ndim == 1:
        return weight.shape[0]
    # A decoder block reads and writes the residual stream: a child of the ModuleList holding all the layers.
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    parent = model.get_submodule(hookpoint.path.rpartition(".")[0])
    if isinstance(parent, nn.ModuleList) and len(parent) == getattr(config, "num_hidden_layers", None):
        return getattr(config, "hidden_size", None)
    return None


def register_activation_hook(hookpoint: Hookpoint, name: str, fn) -> torch.utils.hooks.RemovableHandle:
    """Hook `fn(x) -> new x | None` on the activation, first in line so that later hooks see the edit."""
    if hookpoint.is_input:

        def pre_hook(module, args, kwargs):
            if (new := fn(_hidden_states(args[0] if args else kwargs.get("hidden_states"), name))) is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        return hookpoint.module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)

    def hook(module, args, output):
        is_tuple = isinstance(output, tuple | list) and len(output) > 0
        if (new := fn(_hidden_states(output[0] if is_tuple else output, name))) is None:
            return None
        return type(output)([new, *output[1:]]) if is_tuple else new  # the rest of a tuple passes through

    return hookpoint.module.register_forward_hook(hook, prepend=True)


def _hidden_states(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise HookpointError(
            f"Hookpoint `{name}` carries a {type(x).__name__}, not hidden states; expected a tensor, or a tuple whose "
            "first element is one. Pick a module that takes and returns hidden states, e.g. a decoder block."
        )
    return x


class _StopForward(Exception):
    """Raised by a hook once every requested activation is captured, so that the layers after it never run."""


def capture_activations(
    model: nn.Module,
    hookpoints: Sequence[str],
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    **forward_kwargs: Any,
) -> dict[str, Tensor]:
    r"""
    Run `model` only as far as the deepest hookpoint and return the raw activations there, for harvesting.

    The tensors are the model's own (no copy), `(batch, seq, width)` for decoder blocks. Works under `torch.no_grad()`
    and autocast. No KV cache is built unless `use_cache=True` is passed.

    Args:
        model (`nn.Module`): any causal LM or base model.
        hookpoints (`Sequence[str]`): module paths, optionally with the `.input` suffix.
        input_ids, attention_mask, forward_kwargs: what the model's forward takes.

    Example:

    ```python
    >>> with torch.no_grad():
    ...     acts = capture_activations(lm, ["model.layers.15"], input_ids)  # layers 16-29 never run
    >>> acts["model.layers.15"].shape
    torch.Size([4, 256, 576])
    ```
    """
    sites = resolve_hookpoints(model, hookpoints)
    captured: dict[str, Tensor] = {}

    def capture(name: str):
        def store(x: Tensor) -> None:
            captured[name] = x
            if len(captured) == len(sites):
                raise _StopForward  # the last to fire is the deepest, whatever the order they were named in

        return store

    handles = []
    try:
        handles = [register_activation_hook(site, name, capture(name)) for name, site in sites.items()]
        model(input_ids=input_ids, attention_mask=attention_mask, **{"use_cache": False, **forward_kwargs})
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if missing := [name for name in sites if name not in captured]:
        raise HookpointError(f"Hookpoints {missing} did not run during the forward; does the model use them?")
    return {name: captured[name] for name in sites}
