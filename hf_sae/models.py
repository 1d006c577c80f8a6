"""Load the language model to study: a Hub id, a local directory, or the built-in offline default
(`hf_sae.offline.builtin_models`)."""

import os
import re
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging

from .errors import ModelNotFoundError
from .offline.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL, converted_copy, load_builtin, require_gguf

logger = logging.get_logger(__name__)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


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
            (``"org/name"``), a local model directory, or a local ``.gguf`` file.
        dtype: weights dtype (a ``torch.dtype``, ``"bfloat16"``, ``"auto"``); ``None`` keeps transformers' default.
        device: where to move the model after loading; ``None`` leaves it on the CPU.
        revision, gguf_file, subfolder, trust_remote_code: passed to both model and tokenizer ``from_pretrained``.
        model_kwargs: extra arguments for the model's ``from_pretrained`` only (e.g. ``attn_implementation``).

    Returns:
        ``(model, tokenizer)``, the model in eval mode. ``model.name_or_path`` is the Hub id for built-in models,
        so that SAE configs can record it as ``base_model_name_or_path``.
    """
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if name in BUILTIN_MODELS and not os.path.exists(name):  # a local folder of that name wins
        model, tokenizer = load_builtin(BUILTIN_MODELS[name], model_kwargs)
    else:
        shared = {"revision": revision, "subfolder": subfolder, "trust_remote_code": trust_remote_code}
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

    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    if name in BUILTIN_MODELS and not os.path.exists(name):
        folder = converted_copy(BUILTIN_MODELS[name])
        if folder is None:
            return None
        config = AutoConfig.from_pretrained(folder)
    else:
        name, gguf_file = _resolve_source(name, None)
        if gguf_file is not None:
            return None
        config = _load_config(name, {"revision": revision, "trust_remote_code": trust_remote_code})
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _resolve_source(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Check a local path or Hub id before anything heavy; a ``.gguf`` file path becomes (folder, file name)."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(
                    f"Expected a model directory or a .gguf file, received the file {name!r}. "
                    "Pass the directory that holds config.json and the weights."
                )
            return str(path.parent), path.name
        return str(path), gguf_file
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf") or "\\" in name
    if looks_local or not _HUB_ID.match(name):
        raise ModelNotFoundError(
            f"Expected a built-in model name ({', '.join(BUILTIN_MODELS)}), a Hub id like 'org/name', or an "
            f"existing local path; received {name!r}, which does not exist locally. Check the path."
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
