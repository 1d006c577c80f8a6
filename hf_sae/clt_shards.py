"""Feature sharding of a cross-layer transcoder (`--clt true --shard_features N`): shard s of S holds latents
[s F / S, (s + 1) F / S) of every layer: its slices of each layer's encoder (`W_enc[:, rows]`, `b_enc[:, rows]`), of
each decoder from layer l into layers l.. (`W_dec[l][rows]`) and of JumpReLU's thresholds, with their optimiser
state (`feature_shards.sharded_axes`). Per step, on the group's batch of N tokens, as the unsharded `CltModel` does:

    pre-activations  each shard its own latents, (N, n_layers, F / S)
    TopK             k per token and layer: each shard's top k of every (token, layer) row, merged (`merged_top_k`)
    BatchTopK        k N per layer over the whole batch: each layer merged as an SAE's BatchTopK
                     (`merged_batch_top_k`); the threshold from the group's smallest kept activation per layer
    JumpReLU         per latent: no merge
    decode           each shard its latents' part of every layer's prediction, (N, n_layers, d_out), summed
    penalties        JumpReLU's tanh and pre-activation sums over latents (Ameisen et al. 2025), summed

Every shard then computes the same loss (`CltModel.losses`) from the same sums, so the gradients of a shard's slices
stay on it (the row-parallel layer of Megatron-LM, Shoeybi et al. 2019); b_dec, which every shard holds whole, gets the
same gradient everywhere, the encoders never reading it.

    new_clt_shard         this shard's latents of a new transcoder, the whole never allocated
    sharded_clt_forward   one training step's forward on a shard (`CltOutput`, the whole transcoder's numbers)
    ShardedCltTrainee     the trainer's view of a shard: that forward, per-layer metrics of the whole transcoder
"""

import math

import torch
import torch.distributed as dist
from torch import Tensor

from .architectures import INIT_CHUNK_VALUES
from .configuration_clt import CltConfig
from .feature_shards import (
    FeatureShards,
    all_reduce_counted,
    check_shardable,
    merged_batch_top_k,
    merged_top_k,
    replace_tensor,
    sum_over_shards,
    summed_over_shards,
    whole_fraction,
)
from .modeling_clt import CltModel, CltOutput
from .trainees import CltTrainee


def new_clt_shard(config: CltConfig, shards: FeatureShards) -> CltModel:
    """This shard's latents of the transcoder that `CltModel(config)` builds from the same RNG state, no tensor of the
    whole ever allocated; its config still names the whole. One shard: the whole transcoder."""
    if shards.count == 1:
        return CltModel(config)
    check_shardable(config, shards.count, "the cross-layer transcoder")
    L, n, d_in, d_out = config.n_layers, config.num_latents, config.d_in, config.d_out  # noqa: N806
    start, stop = shards.latent_range(n)
    with torch.device("meta"):
        clt = CltModel(config)
    # `CltPreTrainedModel._init_weights`' draws, in its order: the encoders, then each layer's decoder.
    tensors = {"W_enc": _uniform_latents(L, n, d_in, start, stop, d_in**-0.5)}
    for layer in range(L):
        rows = _uniform_latents(1, n, (L - layer) * d_out, start, stop, (L * d_out) ** -0.5)
        tensors[f"W_dec.{layer}"] = rows.reshape(stop - start, L - layer, d_out)
    tensors |= {"b_enc": torch.zeros(L, stop - start), "b_dec": torch.zeros(L, d_out)}
    if config.architecture == "jumprelu":
        tensors["threshold"] = torch.full((L, stop - start), float(config.jumprelu_init_threshold))
    elif config.architecture == "batchtopk":
        tensors["threshold"] = torch.full((L,), -1.0)  # unset until the first training batch
    for name, tensor in tensors.items():
        replace_tensor(clt, name, tensor)
    return clt


def _uniform_latents(outer: int, n: int, inner: int, start: int, stop: int, bound: float) -> Tensor:
    """`(outer, stop - start, inner)`: latents [start, stop) of one `uniform_(-bound, bound)` draw of an `(outer, n,
    inner)` tensor, from the global RNG. Torch's CPU uniform sampler draws one number per value in order, so the
    values outside the rows are drawn and dropped in chunks of at most `INIT_CHUNK_VALUES`, and the kept rows get
    exactly the unsharded draw's numbers (tests/test_clt_shards.py holds this)."""
    kept = []
    for _ in range(outer):
        _draw_and_drop(start * inner)
        kept.append(torch.empty(stop - start, inner).uniform_(-bound, bound))
        _draw_and_drop((n - stop) * inner)
    return torch.stack(kept)


def _draw_and_drop(values: int) -> None:
    for chunk in range(0, values, INIT_CHUNK_VALUES):
        torch.empty(min(INIT_CHUNK_VALUES, values - chunk)).uniform_()


def _merged_activation(clt: CltModel, pre: Tensor, shards: FeatureShards) -> Tensor:
    """This shard's latents `(N, n_layers, F / S)` as the whole transcoder's selection keeps them: JumpReLU per latent;
    TopK and BatchTopK from the exact global selection, the kept pre-activations through a ReLU, as `CltModel`."""
    cfg = clt.config
    if cfg.architecture == "jumprelu":
        return clt.activate(pre)  # per latent: this shard's thresholds
    layers, width = pre.shape[-2], pre.shape[-1]
    if cfg.architecture == "topk":  # one row per (token, layer)
        flat = pre.reshape(-1, width)
        rows, cols, _ = merged_top_k(flat.detach(), cfg.k, shards, "topk_candidates")
        return torch.zeros_like(flat).index_put((rows, cols), flat[rows, cols].relu()).reshape(pre.shape)
    z = torch.zeros_like(pre)
    smallest = torch.full((layers,), math.inf, device=pre.device)
    for layer in range(layers):  # each layer on its own: k N of the whole batch's (N, F)
        rows, cols, values = merged_batch_top_k(pre[:, layer].detach(), cfg.k, shards)
        z[rows, layer, cols] = pre[rows, layer, cols].relu()
        if values.numel():
            smallest[layer] = torch.where(values > 0, values, math.inf).amin()
    if clt.training:  # the group's smallest kept activation of each layer, as one process sees the whole batch
        clt.track_smallest_kept(all_reduce_counted(smallest, shards.group, "threshold", dist.ReduceOp.MIN))
    return z


def sharded_clt_forward(clt: CltModel, shards: FeatureShards, x: Tensor, target: Tensor,
                        coefficient: float) -> CltOutput:  # fmt: skip
    """A training step's forward of shard `clt` on the group's batch x `(N, n_layers, d_in)`, as `CltModel.forward`
    with `return_loss=True`: reconstruction, loss and its terms and l0 are the whole transcoder's, the same on every
    shard; `latents` and `latent_counts` `(n_layers, F / S)` are this shard's."""
    cfg = clt.config
    pre = clt.pre_activation(x)  # (N, n_layers, F / S)
    z = _merged_activation(clt, pre, shards)
    prediction = sum_over_shards(clt.decode_without_bias(z), shards, "reconstruction") + clt.b_dec.to(z.dtype)
    counts = (z != 0).reshape(-1, cfg.n_layers, z.shape[-1]).sum(0)
    l0 = all_reduce_counted(counts.sum().float(), shards.group, "l0") / max(math.prod(z.shape[:-1]), 1)
    over_shards = lambda total: sum_over_shards(total, shards, "penalties")  # noqa: E731
    losses = clt.losses(pre, z, prediction, target, coefficient, over_shards)
    return CltOutput(reconstruction=prediction, latents=z, l0=l0, latent_counts=counts, loss=sum(losses.values()),
                     **losses)  # fmt: skip


class ShardedCltTrainee(CltTrainee):
    """A cross-layer transcoder's shard: its forward is `sharded_clt_forward`; its latent counters cover its own
    latents of every layer; l0 and dead fractions count the whole transcoder's."""

    def __init__(self, model: CltModel, shards: FeatureShards):
        super().__init__(model)
        self.shards = shards

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.model.config.n_layers, self.model.config.num_latents // self.shards.count)

    def forward(self, wrapped, x: Tensor, target: Tensor, dead: Tensor, coefficient: float):
        return sharded_clt_forward(wrapped, self.shards, x, target, coefficient)

    def layer_l0(self, out) -> Tensor:
        return summed_over_shards(out.latent_counts.sum(-1).float(), self.shards) / out.latents.shape[0]

    def layer_dead_fraction(self, dead: Tensor) -> Tensor:
        return summed_over_shards(dead.sum(-1).float(), self.shards) / self.model.config.num_latents

    def whole_fraction(self, flags: Tensor) -> Tensor:
        return whole_fraction(flags, self.shards)
