"""The Auto classes: `import hf_sae` registers `SaeConfig` and `SaeModel` (and the cross-layer transcoder's
`CltConfig` and `CltModel`), so `AutoModel.from_pretrained` opens an hf_sae folder or repo with no remote code, and
teaches `AutoModel` the other SAE formats `SaeModel` reads.

Those formats (SAELens' `cfg.json`, sparsify, dictionary_learning's `ae.pt`, Gemma Scope's `params.npz`, ...) have no
`config.json` with a `model_type`, so transformers refuses them before any registered class is asked. The policy:
only then is `SaeModel.from_pretrained` asked, which detects the format; where it finds no SAE, transformers' own
error is raised. Every load transformers itself can do stays as it was; the other Auto classes are untouched.
"""

import functools

from transformers import AutoConfig, AutoModel

from .configuration_clt import CltConfig
from .configuration_sae import SaeConfig
from .errors import HubError, SaeConfigError, SaeNotFoundError
from .modeling_clt import CltModel
from .modeling_sae import SaeModel


def register_auto_classes() -> None:
    AutoConfig.register(SaeConfig.model_type, SaeConfig, exist_ok=True)
    AutoModel.register(SaeConfig, SaeModel, exist_ok=True)
    AutoConfig.register(CltConfig.model_type, CltConfig, exist_ok=True)
    AutoModel.register(CltConfig, CltModel, exist_ok=True)
    if not getattr(AutoModel.from_pretrained, "opens_other_sae_formats", False):
        AutoModel.from_pretrained = classmethod(_or_another_sae_format(AutoModel.from_pretrained.__func__))


def _or_another_sae_format(from_pretrained):
    @functools.wraps(from_pretrained)
    def load(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)
        except (OSError, ValueError) as refusal:  # no config.json, or one without a known model_type
            try:
                return SaeModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            except (SaeNotFoundError, SaeConfigError, HubError):  # no SAE there either: transformers' answer stands
                raise refusal from None

    load.opens_other_sae_formats = True
    return load
