"""hf_sae: sparse autoencoders for language-model interpretability, native to the Hugging Face stack.

Importing the package registers `SaeConfig` and `SaeModel` with `AutoConfig` and `AutoModel`, so
`AutoModel.from_pretrained(path)` loads an SAE with no remote code.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel

from .browser import explain, write_browser
from .configuration_sae import ARCHITECTURES, SaeConfig
from .data import DataArguments
from .errors import (
    DataError,
    HfSaeError,
    HookpointError,
    MissingDependencyError,
    SaeConfigError,
    TrainingError,
    WeightsError,
)
from .evaluation import evaluate_saes
from .features import FeatureMetadata, collect_feature_metadata, load_features
from .hooks import SaeHooks, SaeRecorder, capture_activations
from .hub import HubError, load_saes, push_saes_to_hub, save_saes
from .model_card import metrics_to_eval_results
from .modeling_sae import SaeModel, SaeOutput, SaePreTrainedModel
from .models import load_model
from .pipeline import train_saes
from .training import SaeTrainer, SaeTrainingArguments

AutoConfig.register(SaeConfig.model_type, SaeConfig)
AutoModel.register(SaeConfig, SaeModel)

__all__ = [
    "ARCHITECTURES",
    "DataArguments",
    "DataError",
    "FeatureMetadata",
    "HfSaeError",
    "HookpointError",
    "HubError",
    "MissingDependencyError",
    "SaeConfig",
    "SaeConfigError",
    "SaeHooks",
    "SaeModel",
    "SaeOutput",
    "SaePreTrainedModel",
    "SaeRecorder",
    "SaeTrainer",
    "SaeTrainingArguments",
    "TrainingError",
    "WeightsError",
    "capture_activations",
    "collect_feature_metadata",
    "evaluate_saes",
    "explain",
    "load_features",
    "load_model",
    "load_saes",
    "metrics_to_eval_results",
    "push_saes_to_hub",
    "save_saes",
    "train_saes",
    "write_browser",
]
