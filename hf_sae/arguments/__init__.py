"""The argument groups of the `hf-sae` commands: flat dataclasses that one `HfArgumentParser` parses together from
flags or a YAML / JSON file, and that Python builds alike (`group_arguments`). Every field is read by the command
that parses it; choices are `Literal`s, so `--help` lists them and a typo fails before the LM loads. Each group
checks its values once, as it is built (`fields.Checked`), before any expensive work.

    train      the groups of `hf-sae train` (SAEs, LM, text, trainer); cache, eval and features share LM and text
    commands   one group per other command (cache, eval, features, browse, app, explain, push, pull, convert,
               attribute, ...)
"""

from ..fields import group_arguments, settings_of
from .commands import (
    AppArguments,
    AttributeArguments,
    BrowseArguments,
    CacheArguments,
    ConvertArguments,
    CorpusArguments,
    EvaluationArguments,
    ExplainArguments,
    FeatureArguments,
    PullArguments,
    PushArguments,
    check_local_sae_folder,
    check_sae_source,
)
from .train import (
    TRAIN_GROUPS,
    ActivationArguments,
    DataArguments,
    EvalDataArguments,
    LanguageModelArguments,
    SaeArguments,
    SaeTrainingArguments,
    check_batch_division,
)

__all__ = [
    "TRAIN_GROUPS",
    "ActivationArguments",
    "AppArguments",
    "AttributeArguments",
    "BrowseArguments",
    "CacheArguments",
    "ConvertArguments",
    "CorpusArguments",
    "DataArguments",
    "EvalDataArguments",
    "EvaluationArguments",
    "ExplainArguments",
    "FeatureArguments",
    "LanguageModelArguments",
    "PullArguments",
    "PushArguments",
    "SaeArguments",
    "SaeTrainingArguments",
    "check_batch_division",
    "check_local_sae_folder",
    "check_sae_source",
    "group_arguments",
    "settings_of",
]
