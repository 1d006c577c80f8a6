"""The Auto classes: `import hf_sae` registers `SaeConfig` and `SaeModel`, so `AutoModel.from_pretrained` opens an
hf_sae folder or repo with no remote code, and teaches `AutoModel` the other SAE formats `hf_sae.convert` reads.

Those formats (SAELens' `cfg.json`, sparsify, dictionary_learning's `ae.pt`, Gemma Scope's `params.npz`, ...) have no
`config.json` with a `model_type`, so transformers refuses them before any registered class is asked. `AutoModel`
then tries them, and only then: every load transformers itself can do, and every error it raises for what is not
an SAE, stays as it was. `AutoModelForCausalLM` and the other Auto classes are untouched.
"""

import functools

from transformers import AutoConfig, AutoModel

from .configuration_sae import SaeConfig
from .modeling_sae import SaeModel, converted_as_asked

_HUB_KWARGS = ("subfolder", "revision", "token", "cache_dir", "local_files_only")


def register_auto_classes() -> None:
    AutoConfig.register(SaeConfig.model_type, SaeConfig, exist_ok=True)
    AutoModel.register(SaeConfig, SaeModel, exist_ok=True)
    if not getattr(AutoModel.from_pretrained, "opens_other_sae_formats", False):
        AutoModel.from_pretrained = classmethod(_or_another_sae_format(AutoModel.from_pretrained.__func__))


def _or_another_sae_format(from_pretrained):
    @functools.wraps(from_pretrained)
    def load(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)
        except (OSError, ValueError) as refusal:  # no config.json, or one without a known model_type
            from .convert import load_converted  # convert builds SaeModels; imported when first needed

            hub_kwargs = {key: kwargs.get(key) for key in _HUB_KWARGS}
            if (sae := load_converted(pretrained_model_name_or_path, **hub_kwargs)) is None:
                raise refusal
            return converted_as_asked(sae, kwargs)

    load.opens_other_sae_formats = True
    return load
