"""`hf-sae features --sae <CLT folder>`: a cross-layer transcoder's feature metadata, every layer from one run of the
LM, saved as `<folder>/features/layer_{l}/` (`clt_features`). Every refusal comes before the LM's weights load."""

import dataclasses
from pathlib import Path

from .activations import batched
from .arguments import DataArguments, FeatureArguments, LanguageModelArguments
from .clt_features import collect_clt_feature_metadata, save_clt_features
from .clt_hub import holds_clt
from .data import iter_blocks, load_token_blocks
from .errors import ArgumentError
from .feature_store import LayerFeatures
from .modeling_clt import CltModel
from .models import builtin_name, check_against_lm_config, load_lm, max_positions
from .precision import default_device


def is_clt_folder(sae: str) -> bool:
    """Whether `--sae` names a saved cross-layer transcoder rather than an SAE."""
    return holds_clt(Path(sae).expanduser())


def run_clt_features(lm_args: LanguageModelArguments, data_args: DataArguments,
                     args: FeatureArguments) -> LayerFeatures:  # fmt: skip
    """Collect and save every layer's feature metadata of the CLT in `args.sae`; labels set earlier are kept."""
    folder = Path(args.sae).expanduser()
    if args.hookpoint is not None or args.explain is not None:
        flag = "--hookpoint" if args.hookpoint is not None else "--explain"
        raise ArgumentError(
            f"{flag} was given with --sae {args.sae}, a cross-layer transcoder: its layer l reads "
            f"`model.layers.{{l}}.mlp.input` as its config says, and its features are collected for every layer at "
            f"once. Drop {flag}."
        )
    clt = CltModel.from_pretrained(folder)
    name = lm_args.model_name_or_path or builtin_name(clt.config.base_model_name_or_path)
    lm_args = dataclasses.replace(lm_args, model_name_or_path=name)
    check_against_lm_config(lm_args, [*clt.config.hookpoints, *clt.config.output_hookpoints])
    model, tokenizer = load_lm(lm_args, args.device or default_device())
    clt = clt.to(model.device).eval()
    reading = lm_args.reading(model.device)
    blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions(model))
    features = collect_clt_feature_metadata(
        model, tokenizer, clt, batched(iter_blocks(blocks), reading.batch_size), max_tokens=args.max_tokens,
        top_n=args.top_n, before=args.context_before, after=args.context_after, sample_size=args.sample_size,
        skip_after_special=args.skip_after_special, settings={"data": dataclasses.asdict(data_args)},
        **reading.keywords,
    )  # fmt: skip
    save_clt_features(features, folder)
    return features
