"""What a run of `hf-sae train --clt` needs around the shared training loop: its `CltConfig`, checked against the
LM's config and this machine's memory before the LM's weights load; the transcoder itself; its saved folder.

    plan_clt    the run's `CltConfig` from the LM's config (layer count, width), every refusal before the LM loads
    new_clt     the transcoder, initialised from the run's seed
    save_clt    the trained transcoder (`save_pretrained`: loads with `CltModel` or `AutoModel.from_pretrained`), its
                metrics and arguments, into the output folder
    save_trained  what a training run trained: a cross-layer transcoder (`save_clt`), or SAEs (`sweeps.save_runs`)
"""

from pathlib import Path

import torch
from transformers import PreTrainedModel

from .arguments import LanguageModelArguments, SaeArguments, SaeTrainingArguments
from .clt_shards import new_clt_shard
from .configuration_clt import CltConfig
from .errors import ArgumentError
from .feature_shards import check_shardable, planned_shard
from .layout import METRICS, TRAINING_ARGS, staging_folder, write_json
from .memory import check_clt_fits_in_memory
from .modeling_clt import CltModel
from .models import model_skeleton
from .precision import default_device
from .sweeps import SweepRun, save_runs

CLT_NAME = "clt"  # the transcoder's name in the trainer, its metrics and the report
ACTIVATION_BYTES = 4  # a harvested activation in the shuffling buffer (fp32)


def plan_clt(sae_args: SaeArguments, args: SaeTrainingArguments, lm_args: LanguageModelArguments,
             model: PreTrainedModel | None = None) -> CltConfig | None:  # fmt: skip
    """The `CltConfig` of the run over the LM's layers (`model`'s, else read from its config alone, before its
    weights load), refused before anything is allocated when the flags do not fit this LM or the training state
    (with the shuffling buffer) does not fit in memory. None where the LM's config is not at hand before it loads
    (a GGUF file): the plan is then made again with the loaded `model`."""
    if args.distribute_hookpoints:
        raise ArgumentError(
            "--distribute_hookpoints gives each process the SAEs of some hookpoints, but a cross-layer transcoder is "
            "one model that reads every layer at once. Drop --distribute_hookpoints: every process then trains a copy "
            "on its share of each batch (data parallelism)."
        )
    lm = model if model is not None else model_skeleton(lm_args.model_name_or_path)
    if lm is None:
        return None
    lm_config, base_model = lm.config, None if model is None else model.name_or_path
    layers = sae_args.clt_layer_indices(lm_config.num_hidden_layers)
    width = lm_config.hidden_size  # a Llama MLP reads and writes the residual width
    config = sae_args.clt_config(layers, width, width, base_model)
    if args.shard_features > 1:
        check_shardable(config, args.shard_features, "the cross-layer transcoder")
    buffered = min(args.shuffle_buffer_tokens, args.train_tokens) + args.batch_size  # the pool, and a batch served
    check_clt_fits_in_memory(config.n_layers, config.num_latents, config.d_in, config.d_out, default_device(),
                             extra_bytes=buffered * 2 * len(layers) * width * ACTIVATION_BYTES,
                             shards=args.shard_features)  # fmt: skip
    return config


def new_clt(config: CltConfig, args: SaeTrainingArguments, accelerator) -> CltModel:
    """The transcoder, initialised from the run's seed alone; with --shard_features, only this process's latents of
    it (`clt_shards.new_clt_shard`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        shard = planned_shard(args.shard_features, accelerator.process_index)
        return new_clt_shard(config, shard).to(accelerator.device)


def save_clt(clt: CltModel, report: dict, out: Path, settings: dict) -> None:
    """`clt` saved with `save_pretrained` in `out` itself (config.json, model.safetensors), with the run's metrics
    and arguments; each file is written in a staging folder first and renamed into place."""
    with staging_folder(out / CLT_NAME) as staged:
        clt.save_pretrained(staged)
        for file in sorted(staged.iterdir()):
            file.replace(out / file.name)
    write_json(out / METRICS, report)
    write_json(out / TRAINING_ARGS, settings)


def save_trained(runs: list[SweepRun], trained: dict, report: dict, out: Path, settings: dict) -> None:
    """A run's trained models in `out`: its cross-layer transcoder, or its SAEs (a folder each, `save_runs`)."""
    if isinstance(clt := trained.get(CLT_NAME), CltModel):
        return save_clt(clt, report, out, settings)
    save_runs(runs, trained, report, out, settings)
