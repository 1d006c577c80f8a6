"""hf_sae: sparse autoencoders for language-model interpretability, native to the Hugging Face stack.

Importing the package registers `SaeConfig` and `SaeModel` with `AutoConfig` and `AutoModel`, so
`AutoModel.from_pretrained(path)` loads an SAE with no remote code, in hf_sae's format or another one `hf_sae.formats`
reads (`hf_sae.auto`).
"""

from .architectures import ARCHITECTURES, fold_decoder_norm_
from .arguments import (
    ActivationArguments,
    DataArguments,
    EvalDataArguments,
    EvaluationArguments,
    FeatureArguments,
    LanguageModelArguments,
    SaeArguments,
    SaeTrainingArguments,
)
from .attribution import AttributionGraph, ReplacementModel, attribute, read_graph_json, write_graph_json
from .auto import register_auto_classes
from .browser import write_browser
from .configuration_clt import CltConfig
from .configuration_sae import SaeConfig
from .errors import (
    ArgumentError,
    CorpusDownloadError,
    DataError,
    ExplainerError,
    FeatureMetadataError,
    FileFormatError,
    HfSaeError,
    HookpointError,
    HubError,
    MissingDependencyError,
    ModelNotFoundError,
    SaeConfigError,
    SaeNotFoundError,
    SteeringError,
    TrainingError,
    WeightsError,
    WriteError,
)
from .evaluation import evaluate_saes
from .feature_store import FeatureMetadata, load_features
from .features import collect_feature_metadata, explain
from .hookpoints import capture_activations, resolve_hookpoints
from .hooks import SaeHooks, SaeRecorder
from .hub import load_saes, load_transcoders, push_saes_to_hub, save_saes
from .model_card import metrics_to_eval_results
from .modeling_clt import CltModel, CltOutput
from .modeling_sae import SaeModel, SaeOutput, SaePreTrainedModel
from .models import load_model
from .runners import run_evaluation, run_features, train_saes
from .training import SaeTrainer
from .version import __version__

register_auto_classes()

__all__ = [
    "ARCHITECTURES",
    "CltConfig",
    "CltModel",
    "CltOutput",
    "ActivationArguments",
    "ArgumentError",
    "AttributionGraph",
    "CorpusDownloadError",
    "DataArguments",
    "DataError",
    "EvalDataArguments",
    "EvaluationArguments",
    "ExplainerError",
    "FeatureArguments",
    "FeatureMetadata",
    "FeatureMetadataError",
    "FileFormatError",
    "HfSaeError",
    "HookpointError",
    "HubError",
    "LanguageModelArguments",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ReplacementModel",
    "SaeArguments",
    "SaeConfig",
    "SaeConfigError",
    "SaeHooks",
    "SaeModel",
    "SaeNotFoundError",
    "SaeOutput",
    "SaePreTrainedModel",
    "SaeRecorder",
    "SaeTrainer",
    "SaeTrainingArguments",
    "SteeringError",
    "TrainingError",
    "WeightsError",
    "WriteError",
    "__version__",
    "attribute",
    "capture_activations",
    "collect_feature_metadata",
    "evaluate_saes",
    "fold_decoder_norm_",
    "explain",
    "load_features",
    "load_model",
    "load_saes",
    "load_transcoders",
    "metrics_to_eval_results",
    "push_saes_to_hub",
    "read_graph_json",
    "resolve_hookpoints",
    "run_evaluation",
    "run_features",
    "save_saes",
    "train_saes",
    "write_browser",
    "write_graph_json",
]
