"""`FeatureShardedTrainer`: `SaeTrainer` with every SAE's latents split over the processes of a shard group
(`--shard_features N`; the math is `feature_shards`'). Each process keeps its rows of every SAE, their gradients and
Adam's state, so memory per process is 1 / N of the SAEs; its checkpoint holds its own rows. The trained SAEs are
joined on the main process and saved as an unsharded run's.

    ShardedSaeTrainee       an SAE shard as the trainer sees it: the sharded forward, metrics of the whole SAE
    FeatureShardedTrainer   the loop over shards, on a (data x feature) mesh
    check_feature_sharding  what --shard_features cannot serve, refused before the LM loads
    trainer_class           the trainer a run's arguments ask for
"""

import os

import torch
import torch.distributed as dist
from accelerate.logging import get_logger

from .activations import ShufflingBuffer
from .arguments import SaeArguments, SaeTrainingArguments
from .arguments.train import check_latents_fit
from .clt_shards import ShardedCltTrainee
from .errors import ArgumentError
from .feature_shards import (
    BYTES_MOVED,
    UNSHARDABLE,
    FeatureShards,
    average_over_data,
    check_shard_count,
    check_shardable,
    clip_sharded_grad_norm_,
    feature_mesh,
    gather_inputs,
    gather_shards,
    shard_sae_,
    sharded_forward,
    whole_fraction,
)
from .hookpoints import hookpoint_width, resolve_hookpoints
from .memory import check_fits_in_memory
from .modeling_clt import CltModel
from .modeling_sae import SaeModel
from .models import model_skeleton
from .precision import default_device
from .trainees import SaeTrainee, trainee
from .training import SaeTrainer

logger = get_logger(__name__)

# Options that --shard_features cannot serve, with the reason each is refused.
_CONFLICTS = {"distribute_hookpoints": "hookpoints go to one owner each, while shards split every SAE over a group"}


def check_feature_sharding(sae_args: SaeArguments, args: SaeTrainingArguments, lm_args=None, runs=()) -> None:
    """Refuse --shard_features where it cannot serve the run, before anything loads: options it does not combine
    with, an architecture it cannot shard, a latent count it does not divide (given, or from --expansion_factor and
    the width the LM's config gives each hookpoint of `runs`, the sweep's configurations), more shards than
    processes. What cannot fit in memory even at width 1 is refused first, sharded or not."""
    check_latents_fit(sae_args, args)
    shards = args.shard_features
    if shards == 1:
        return
    for name, reason in _CONFLICTS.items():
        for group in (sae_args, args):
            if getattr(group, name, False):
                raise ArgumentError(f"--shard_features {shards} cannot be combined with --{name}: {reason}.")
    if sae_args.architecture in UNSHARDABLE:
        raise ArgumentError(
            f"--shard_features cannot train --architecture {sae_args.architecture}: "
            f"{UNSHARDABLE[sae_args.architecture]}. Drop --shard_features or choose another architecture."
        )
    if sae_args.num_latents is not None and sae_args.num_latents % shards:
        below, above = sae_args.num_latents // shards * shards, -(-sae_args.num_latents // shards) * shards
        raise ArgumentError(
            f"--shard_features {shards} needs a latent count that {shards} divides; got --num_latents "
            f"{sae_args.num_latents}. Use --num_latents {below} or {above}."
        )
    check_shard_count(shards, int(os.environ.get("WORLD_SIZE", args.num_processes)))
    if lm_args is not None and not sae_args.clt:  # a transcoder's width and memory: `clt_runs.plan_clt`
        _check_resolved_widths(sae_args.hookpoint_pairs(), lm_args, runs, shards)


def _check_resolved_widths(pairs: dict[str, str | None], lm_args, runs, shards: int) -> None:
    """Each configuration's latent count at each hookpoint, as its SaeConfig resolves it, divisible by `shards`, and
    this process's rows of every SAE within memory; the widths read from the LM's config alone. Where that config is
    not at hand before the LM loads (a GGUF file) or a width is not known without running the LM, the SAEs are
    checked once the LM has loaded, before they are built."""
    skeleton = model_skeleton(lm_args.model_name_or_path)
    if skeleton is None:
        return
    sites = resolve_hookpoints(skeleton, [h for pair in pairs.items() for h in pair if h])
    widths = {name: hookpoint_width(skeleton, site) for name, site in sites.items()}
    for hookpoint, output in pairs.items():
        if widths[hookpoint] is None or (output is not None and widths[output] is None):
            continue
        for run in runs:
            config = run.sae_args.config(hookpoint, widths[hookpoint], None, output, widths.get(output))
            size = run.sae_args.num_latents
            origin = "" if size else f" (--expansion_factor {run.sae_args.expansion_factor:g} x d_in {config.d_in})"
            check_shardable(config, shards, run.sae_name(hookpoint) + origin)
            check_fits_in_memory(config.num_latents, config.d_in, len(pairs) * len(runs), default_device(), shards)


def trainer_class(args: SaeTrainingArguments) -> type[SaeTrainer]:
    return FeatureShardedTrainer if args.shard_features > 1 else SaeTrainer


class ShardedSaeTrainee(SaeTrainee):
    """An SAE shard: its forward is `sharded_forward`; its latent counters cover its own latents."""

    def __init__(self, model: SaeModel, shards: FeatureShards):
        super().__init__(model)
        self.shards = shards

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.model.config.num_latents // self.shards.count,)

    def forward(self, wrapped, x, target, dead, coefficient: float):
        return sharded_forward(wrapped, self.shards, x, target, dead, coefficient)

    def metrics(self, out, target, dead) -> dict[str, torch.Tensor]:
        return super().metrics(out, target, dead) | {"dead_fraction": self.whole_fraction(dead)}

    def whole_fraction(self, flags: torch.Tensor) -> torch.Tensor:
        return whole_fraction(flags, self.shards)


def sharded_trainee(model: SaeModel | CltModel, shards: FeatureShards) -> SaeTrainee:
    return ShardedCltTrainee(model, shards) if isinstance(model, CltModel) else ShardedSaeTrainee(model, shards)


class FeatureShardedTrainer(SaeTrainer):
    """`SaeTrainer` on a (data x feature) mesh: `args.shard_features` processes share each SAE, each holding its
    rows; the groups are data parallel. `saes` are this process's rows already (`new_shard`, as `train_saes` builds
    them: no process holds a whole SAE), or whole SAEs, cut here."""

    def __init__(
        self,
        args: SaeTrainingArguments,
        saes: dict[str, SaeModel | CltModel],
        buffer: ShufflingBuffer,
        accelerator=None,
        owners: dict[str, int] | None = None,
        learning_rates: dict[str, float] | None = None,
    ):
        if owners:
            reason = _CONFLICTS["distribute_hookpoints"]
            raise ArgumentError(f"--shard_features cannot be combined with --distribute_hookpoints: {reason}.")
        super().__init__(args, saes, buffer, accelerator, None, learning_rates)
        self.shards = feature_mesh(args.shard_features)
        for name, sae in saes.items():
            check_shardable(sae.config, self.shards.count, name)
            shard_sae_(sae, self.shards)
        self.trainees = {name: sharded_trainee(sae, self.shards) for name, sae in saes.items()}
        self.state.feature_shards = self.shards.count
        BYTES_MOVED.clear()  # counted from the first batch on
        rows = {name: self.shards.latent_range(sae.config.num_latents) for name, sae in saes.items()}
        logger.info(
            f"Process {self.accelerator.process_index} is feature shard {self.shards.index} of {self.shards.count} "
            f"in data group {self.shards.data_index} of {self.shards.data_count}: latent rows {rows}, "
            f"{sum(p.numel() for sae in saes.values() for p in sae.parameters()):,} parameters.",
            main_process_only=False,
        )

    def prepare(self, first_batch: dict[str, torch.Tensor] | None = None) -> None:
        super().prepare(first_batch)
        self.first_step = self.state.step  # where this process's count of bytes moved starts

    def _batches(self):
        """The buffer's micro-batches, each gathered to the shard group (the same batch on each of its shards)."""
        for batch in self.buffer:
            yield gather_inputs(batch, self.shards)

    def _across_ranks(self, value: torch.Tensor, reduction: str) -> torch.Tensor:
        """Reduced over the data axis: the shards of one group hold the same batch."""
        if self.shards.data_count == 1:
            return value
        value = value.clone()
        dist.all_reduce(value, group=self.shards.data_group)
        return value / self.shards.data_count if reduction == "mean" else value

    def _clip_gradients(self, sae: SaeModel) -> torch.Tensor:
        average_over_data(sae, self.shards)
        return clip_sharded_grad_norm_(sae, self.args.max_grad_norm or float("inf"), self.shards)

    def bytes_per_step(self) -> dict[str, int]:
        """Bytes this process put into each kind of collective per optimiser step, over the steps it trained."""
        steps = max(self.state.step - self.first_step, 1)
        return {what: round(count / steps) for what, count in sorted(BYTES_MOVED.items())}

    def trained_saes(self) -> dict[str, SaeModel]:
        """The whole SAEs, joined from their shards on the main process, taking raw activations; `{}` elsewhere."""
        moved = self.bytes_per_step()
        logger.info(f"Feature shard {self.shards.index} moved {sum(moved.values()):,} bytes per step: {moved}",
                    main_process_only=False)  # fmt: skip
        result = {}
        for name, sae in self.saes.items():
            if sae.config.architecture == "batchtopk":  # the same in a group; the groups saw other batches
                sae.threshold.copy_(self._across_ranks(sae.threshold.detach().clone(), "mean"))
            joined = gather_shards(sae, self.shards)
            if joined is not None:
                result[name] = trainee(joined).folded(self.state.scales[name], self.state.output_scales.get(name))
        return result

    def _dead_fractions(self) -> dict[str, dict[str, float]]:
        fractions = {}
        for name in self.saes:
            whole = self.trainees[name].whole_fraction
            fractions[name] = {"train_dead_fraction": whole(self.dead_latents(name)).item(),
                               "train_never_fired_fraction": whole(~self.state.ever_fired[name]).item()}  # fmt: skip
        return fractions
