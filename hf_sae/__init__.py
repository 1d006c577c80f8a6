"""hf_sae: sparse autoencoders for language-model interpretability, native to the Hugging Face stack.

Importing the package registers `SaeConfig` and `SaeModel` with `AutoConfig` and `AutoModel`, so
`AutoModel.from_pretrained(path)` loads an SAE with no remote code.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel

from .configuration_sae import ARCHITECTURES, SaeConfig
from .errors import (
    DataError,
    HfSaeError,
    HookpointError,
    MissingDependencyError,
    SaeConfigError,
    TrainingError,
    WeightsError,
)
from .hooks import SaeHooks, SaeRecorder, capture_activations
from .hub import HubError, load_saes, push_saes_to_hub, save_saes
from .model_card import metrics_to_eval_results
from .modeling_sae import SaeModel, SaeOutput, SaePreTrainedModel

AutoConfig.register(SaeConfig.model_type, SaeConfig)
AutoModel.register(SaeConfig, SaeModel)

__all__ = [
    "ARCHITECTURES",
    "DataError",
    "HfSaeError",
    "HookpointError",
    "HubError",
    "MissingDependencyError",
    "SaeConfig",
    "SaeHooks",
    "SaeRecorder",
    "SaeConfigError",
    "SaeModel",
    "SaeOutput",
    "SaePreTrainedModel",
    "TrainingError",
    "WeightsError",
    "capture_activations",
    "load_saes",
    "metrics_to_eval_results",
    "push_saes_to_hub",
    "save_saes",
]
