"""Load the language model to study: a Hub id, a local directory, or the built-in offline default
(`hf_sae.offline.builtin_models`).

    load_model                 an LM and its tokenizer, from the same source arguments
    model_skeleton             its config and module tree without weights, to check names before loading
    load_lm                    the frozen LM a run's `LanguageModelArguments` name, on a device or a device map
    check_against_lm_config    hookpoints and context size against the LM, before its weights load
    load_saes_and_lm           SAEs and their LM (by default their base model), checked against each other
"""

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import get_session
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging

from .data import check_context_size
from .errors import ArgumentError, ModelNotFoundError
from .hookpoints import resolve_hookpoints
from .hub import load_saes
from .hub_client import TRANSPORT_ERRORS
from .layout import find_sae_folders
from .offline.builtin_models import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_name,
    converted_copy,
    load_builtin,
    require_gguf,
)
from .precision import default_device
from .sources import is_hub_id, local_path

if TYPE_CHECKING:  # the argument groups sit above the LM side; only their fields are read here
    from .arguments import LanguageModelArguments

logger = logging.get_logger(__name__)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    revision: str | None = None,
    gguf_file: str | None = None,
    subfolder: str = "",
    trust_remote_code: bool = False,
    **model_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, always with the same source arguments so that the two match.

    Args:
        name_or_path: a built-in name (``"smollm2-135m-instruct"``, also what ``None`` means), a Hub id
            (``"org/name"``), a local model directory, or a local ``.gguf`` file. Offline (``HF_HUB_OFFLINE``, or the
            Hub out of reach) a Hub id loads from the Hugging Face cache, else, for the built-in model's Hub id, from
            the built-in copy (logged); any other is refused at once, saying how to get it.
        dtype: weights dtype (a ``torch.dtype``, ``"bfloat16"``, ``"auto"``); ``None`` keeps transformers' default.
        device: where to move the model after loading; ``None`` leaves it on the CPU.
        revision, gguf_file, subfolder, trust_remote_code: passed to both model and tokenizer ``from_pretrained``.
        model_kwargs: extra arguments for the model's ``from_pretrained`` only (e.g. ``attn_implementation``).

    Returns:
        ``(model, tokenizer)``, the model in eval mode. ``model.name_or_path`` is the Hub id for built-in models,
        so that SAE configs can record it as ``base_model_name_or_path``.
    """
    name, cached = _online_or_cached(DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path), revision)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if name in BUILTIN_MODELS and not os.path.exists(name):  # a local folder of that name wins
        model, tokenizer = load_builtin(BUILTIN_MODELS[name], model_kwargs)
    else:
        shared = {"revision": revision, "subfolder": subfolder, "trust_remote_code": trust_remote_code}
        shared |= {"local_files_only": True} if cached else {}
        name, gguf_file = _resolve_source(name, gguf_file)
        if gguf_file is not None:
            require_gguf()
            shared["gguf_file"] = gguf_file
        config = _load_config(name, shared)
        model = AutoModelForCausalLM.from_pretrained(name, config=config, **shared, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **shared)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def model_skeleton(
    name_or_path: str | os.PathLike | None = None, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedModel | None:
    """The LM's modules without their weights (on the meta device, from its config alone), so that hookpoints and
    context sizes are checked before gigabytes are read or downloaded. None where the config itself is not at hand
    cheaply: a GGUF file, or the built-in model before its first conversion (small and local: loading it is quick)."""
    from accelerate import init_empty_weights

    name, cached = _online_or_cached(DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path), revision)
    if name in BUILTIN_MODELS and not os.path.exists(name):
        folder = converted_copy(BUILTIN_MODELS[name])
        if folder is None:
            return None
        config = AutoConfig.from_pretrained(folder)
    else:
        name, gguf_file = _resolve_source(name, None)
        if gguf_file is not None:
            return None
        shared = {"revision": revision, "trust_remote_code": trust_remote_code}
        config = _load_config(name, shared | ({"local_files_only": True} if cached else {}))
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be used now, in words (`HF_HUB_OFFLINE` is set, or its endpoint gave no answer within
    `timeout` seconds), or None when it answers: one request, where the client's own retries take tens of seconds."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except TRANSPORT_ERRORS as error:
        return f"the Hub endpoint {constants.ENDPOINT} cannot be reached ({type(error).__name__}: {error})"
    return None


def _online_or_cached(name: str, revision: str | None) -> tuple[str, bool]:
    """`(name, from the cache only)`: a Hub id as given while the Hub answers; offline, from the Hugging Face cache
    where it is there, else the built-in copy of the model it names (`builtin_name`, the rule the CLI applies to an
    SAE's base model); anything else offline is refused now, not after the client's retries. Other names pass."""
    if name in BUILTIN_MODELS or os.path.exists(name) or not is_hub_id(name) or not (why := offline_reason()):
        return name, False
    if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return name, True
    if (builtin := builtin_name(name)) != name:
        logger.warning(
            f"Offline ({why}) and {name!r} is not in the Hugging Face cache: loading hf_sae's built-in copy of it "
            f"({builtin!r}, dequantized from {BUILTIN_MODELS[builtin].gguf_file}) instead."
        )
        return builtin, False
    raise ModelNotFoundError(
        f"Cannot load the model {name!r}: offline ({why}), and it is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}). Download it once where the Hub is reachable (`hf download {name}`), pass a "
        f"local model folder, or use the built-in model: `hf_sae.load_model()` ({', '.join(BUILTIN_MODELS)})."
    )


def _resolve_source(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Check a local path or Hub id before anything heavy; a ``.gguf`` file path becomes (folder, file name)."""
    path = local_path(name, "The model", ModelNotFoundError)
    if path is not None:
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(
                    f"Expected a model directory or a .gguf file, received the file {name!r}. "
                    "Pass the directory that holds config.json and the weights."
                )
            return str(path.parent), path.name
        return str(path), gguf_file
    if not is_hub_id(name):
        raise ModelNotFoundError(
            f"Expected a built-in model name ({', '.join(BUILTIN_MODELS)}), a Hub id like 'org/name', or an "
            f"existing local path; received {name!r}, which is none of them. Check the name."
        )
    return name, gguf_file


def _load_config(name: str, shared: dict):
    """Load only the config (small) so that a wrong id or a model that is not a causal LM fails fast."""
    try:
        config = AutoConfig.from_pretrained(name, **shared)
    except OSError as error:
        raise ModelNotFoundError(
            f"Could not load a model config from {name!r} ({error}). Expected a Hub id of an existing repo (check "
            f"spelling, revision and access token; offline, the model must already be in the Hugging Face cache), "
            f"a local directory with config.json, or a built-in name: {', '.join(BUILTIN_MODELS)}."
        ) from error
    # Remote-code configs are not in transformers' mapping; AutoModelForCausalLM decides for those.
    remote = shared.get("trust_remote_code") and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if not remote and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelNotFoundError(
            f"Expected a causal language model, but {name!r} has model_type {config.model_type!r}, which "
            "AutoModelForCausalLM cannot load. Pick a decoder model (e.g. Llama, GPT-2, Gemma)."
        )
    return config


def load_lm(lm_args: "LanguageModelArguments", device):
    """The frozen LM on `device`, or spread over the GPUs of this machine by `--lm_device_map` (e.g. `auto`)."""
    where = {"device_map": lm_args.lm_device_map} if lm_args.lm_device_map else {"device": device}
    model, tokenizer = load_model(lm_args.model_name_or_path, **where)
    model.requires_grad_(False)
    return model, tokenizer


def check_against_lm_config(
    lm_args: "LanguageModelArguments", hookpoints: list[str], context_size: int | None = None
) -> None:
    """Hookpoints and context size checked against the LM's config and module tree, before its weights load."""
    skeleton = model_skeleton(lm_args.model_name_or_path)
    if skeleton is not None:
        resolve_hookpoints(skeleton, hookpoints)  # unknown names fail here, listing the closest
        if context_size is not None:
            check_context_size(context_size, max_positions(skeleton))


def max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def load_saes_and_lm(
    source: str,
    hookpoints: list[str] | None,
    lm_args: "LanguageModelArguments",
    *,
    revision: str | None = None,
    device: str | None = None,
    read_at: str | None = None,
):
    """`(saes, model, tokenizer)`: SAEs by hookpoint from a local folder (a training run's too: only its SAE
    folders count, not its checkpoints or logs) or a Hub repo, and their LM, by default their base model (the
    built-in offline copy when that is the built-in model's Hub id). The SAEs' hookpoints (or `read_at`, where
    they are read elsewhere) must be modules of that LM, checked before its weights load."""
    path = Path(source).expanduser()
    if path.is_dir() and hookpoints is None:
        hookpoints = list(find_sae_folders(path)[0]) or None
    saes = load_saes(source, hookpoints, revision=revision)
    name = lm_args.model_name_or_path
    if name is None:
        names = {sae.config.base_model_name_or_path for sae in saes.values()} - {None}
        if len(names) > 1:
            raise ArgumentError(f"These SAEs come from different models ({sorted(names)}); pass --model_name_or_path.")
        name = builtin_name(names.pop() if names else None)
    lm_args = dataclasses.replace(lm_args, model_name_or_path=name)
    sites = [h for n, sae in saes.items() for h in (sae.config.hookpoint or n, sae.config.output_hookpoint) if h]
    check_against_lm_config(lm_args, [read_at] if read_at else sites)
    model, tokenizer = load_lm(lm_args, device or default_device())
    return {h: sae.to(model.device).eval() for h, sae in saes.items()}, model, tokenizer


def load_sae_and_lm(sae_dir: str, lm_args: "LanguageModelArguments", *, device: str | None = None,
                    read_at: str | None = None):  # fmt: skip
    """`(sae, model, tokenizer)` for one SAE folder, as `load_saes_and_lm`."""
    path = Path(sae_dir).expanduser()
    if not path.is_dir():
        raise ArgumentError(f"--sae must be a local SAE folder (config.json, model.safetensors); got {sae_dir!r}.")
    saes, model, tokenizer = load_saes_and_lm(str(path), None, lm_args, device=device, read_at=read_at)
    if len(saes) != 1:
        raise ArgumentError(f"{sae_dir} holds {len(saes)} SAEs ({list(saes)}); pass the folder of one of them.")
    return next(iter(saes.values())), model, tokenizer
