"""Feature sharding: one SAE's latents split over the processes of a shard group, so that a dictionary wider than one
device trains (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", trained 16M latents this way). Shard s
of S holds rows [s L / S, (s + 1) L / S) of W_enc, b_enc, W_dec and of every per-latent tensor, and their optimiser
state. Per step the processes move activation-sized tensors and top-k candidates, never anything num_latents x d_in
(the bytes each moves are in `BYTES_MOVED`, and docs/scaling.md does the arithmetic):

    inputs          every shard's micro-batch, all-gathered: the group trains on one batch of N tokens   n d_in
    pre-activations each shard its own columns, (N, L / S)
    TopK            each shard's top k per token, all-gathered; the global top k is picked from them     N k
    BatchTopK       each shard's top k N, all-gathered; the exact global threshold and tie rule          k N
    ReLU, JumpReLU, gated: per-latent selections, no merge
    AuxK            the top k_aux dead latents per token, merged as TopK's                               N k_aux
    decode          each shard its latents' part of x̂, all-reduced                                       N d_out
    penalties       each shard its latents' part, all-reduced                                            scalars

Every shard then computes the same loss from the same summed tensors, so the backward of each sum is the identity
(the row-parallel layer of Megatron-LM, Shoeybi et al. 2019) and the gradients of a shard's rows stay on it. What
every shard holds whole (b_dec, W_skip, BatchTopK's threshold) gets the same gradient everywhere, but for b_dec's
share through the encoder, whose (d_in,) gradient is all-reduced. With data parallelism too, the processes form a
2-D device mesh (data x feature): rank = data_index * S + shard_index; gradients are averaged over the data axis.
A cross-layer transcoder's forward on a shard is `clt_shards`', on the same collectives.

    FeatureShards, feature_mesh     the mesh and this process's place in it (`planned_shard`: before the mesh exists)
    new_shard                       this shard's rows of a new SAE, the whole never allocated
    sharded_axes                    the per-latent tensors of an SAE or a cross-layer transcoder, with their axis
    shard_sae_, gather_shards       a model cut to this shard's latents; the whole again, on the main process
    sharded_forward                 one training step's forward on a shard (`SaeOutput`, global numbers)
    merged_top_k, merged_batch_top_k   this shard's part of the exact global selection
    clip_sharded_grad_norm_, average_over_data
"""

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import init_device_mesh

from .architectures import ARCHITECTURES, _track_batchtopk_threshold, initial_tensors
from .configuration_sae import SaeConfig
from .distribution import gather_to_main
from .errors import ArgumentError
from .modeling_clt import CltModel
from .modeling_sae import SaeModel, SaeOutput, _auxk_loss, _auxk_width
from .selection import batch_top_k, top_k_per_row
from .sparse_ops import SparseCode, SparseEncode

# Bytes each process has put into every kind of collective since the last reset: `{what: bytes}`.
BYTES_MOVED: Counter[str] = Counter()
# Architectures whose loss is not a sum over latents plus a function of the summed reconstruction.
UNSHARDABLE = {"matryoshka_batchtopk": "its nested prefixes decode groups of latents that span shards"}


@dataclass(frozen=True)
class FeatureShards:
    """This process's place in the (data x feature) mesh."""

    count: int
    index: int
    group: dist.ProcessGroup | None
    data_count: int = 1
    data_index: int = 0
    data_group: dist.ProcessGroup | None = None

    def latent_range(self, num_latents: int) -> tuple[int, int]:
        size = num_latents // self.count
        return self.index * size, (self.index + 1) * size


def check_shard_count(shards: int, world: int) -> None:
    """Refuse a shard count the processes cannot form: more shards than processes, or not a divisor of them."""
    if shards > world or world % shards:
        raise ArgumentError(
            f"--shard_features {shards} splits each SAE's latents over {shards} processes, but this run has {world} "
            f"process(es), which {shards} must divide (each group of {shards} shares one SAE; the groups are data "
            f"parallel). Use --shard_features among {[n for n in range(1, world + 1) if world % n == 0]}, or launch "
            f"a multiple of {shards} processes."
        )


def check_shardable(config: SaeConfig, shards: int, name: str) -> None:
    """Refuse an SAE whose latents do not split evenly, or whose architecture cannot be sharded exactly."""
    if config.architecture in UNSHARDABLE:
        raise ArgumentError(
            f"--shard_features cannot train {name} ({config.architecture}): {UNSHARDABLE[config.architecture]}. "
            f"Use one of {[a for a in ARCHITECTURES if a not in UNSHARDABLE]}, or drop --shard_features."
        )
    if config.num_latents % shards:
        below, above = config.num_latents // shards * shards, -(-config.num_latents // shards) * shards
        raise ArgumentError(
            f"--shard_features {shards} needs a latent count that {shards} divides; {name} has {config.num_latents} "
            f"latents. Use --num_latents {below} or {above} (or an --expansion_factor giving one)."
        )


def planned_shard(shard_count: int, rank: int) -> FeatureShards:
    """Process `rank`'s place in the mesh, without its process groups: rank = data_index * S + shard_index."""
    return FeatureShards(shard_count, rank % shard_count, None, data_index=rank // shard_count)


def feature_mesh(shard_count: int) -> FeatureShards:
    """The (world / shard_count) x shard_count device mesh over the initialised process group."""
    world = dist.get_world_size()
    check_shard_count(shard_count, world)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device, (world // shard_count, shard_count), mesh_dim_names=("data", "feature"))
    data_index, index = mesh.get_coordinate()
    planned = planned_shard(shard_count, dist.get_rank())
    if (planned.data_index, planned.index) != (data_index, index):  # the SAEs were built for the planned place
        raise RuntimeError(f"Rank {dist.get_rank()} sits at {(data_index, index)} of the mesh, not at the planned "
                           f"{(planned.data_index, planned.index)}.")  # fmt: skip
    return FeatureShards(shard_count, index, mesh.get_group("feature"), world // shard_count, data_index,
                         mesh.get_group("data"))  # fmt: skip


# ---- collectives, counted -------------------------------------------------------------------------------------------


def _all_gather(tensor: Tensor, group, what: str) -> Tensor:
    """(S, *tensor.shape): every shard's `tensor`, in shard order."""
    BYTES_MOVED[what] += tensor.numel() * tensor.element_size()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def all_reduce_counted(tensor: Tensor, group, what: str, op=dist.ReduceOp.SUM) -> Tensor:
    BYTES_MOVED[what] += tensor.numel() * tensor.element_size()
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


def summed_over_shards(value: Tensor, shards: FeatureShards) -> Tensor:
    """A copy of `value` summed over the shard group (a metric: not counted in `BYTES_MOVED`, no gradient)."""
    value = value.detach().clone()
    dist.all_reduce(value, group=shards.group)
    return value


def whole_fraction(flags: Tensor, shards: FeatureShards) -> Tensor:
    """The fraction of the whole model's latents flagged, from every shard's `flags` of its own latents."""
    return summed_over_shards(flags.sum().float(), shards) / (flags.numel() * shards.count)


class _SumOverShards(torch.autograd.Function):
    """The sum of every shard's `partial`. Each shard computes the same loss from it, so the gradient of its own
    partial is the sum's gradient as it stands: the backward is the identity."""

    @staticmethod
    def forward(ctx, partial: Tensor, group, what: str):
        return all_reduce_counted(partial.clone(), group, what)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


class _SumGradientOverShards(torch.autograd.Function):
    """The identity, whose gradient is summed over the shards: for a tensor every shard holds whole and uses with its
    own latents (b_dec, subtracted before each shard's encoder)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group):
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return all_reduce_counted(grad.clone(), ctx.group, "b_dec_gradient"), None


def gather_inputs(batch: dict[str, Tensor], shards: FeatureShards) -> dict[str, Tensor]:
    """Every shard's `(n, d)` micro-batch of each hookpoint, concatenated in shard order: `(S n, d)`, the same on
    every shard of the group."""
    if shards.count == 1:
        return batch
    return {site: _all_gather(x, shards.group, "inputs").flatten(0, 1) for site, x in batch.items()}


# ---- the exact global selection, from each shard's candidates ------------------------------------------------------


def merged_top_k(pre: Tensor, k: int, shards: FeatureShards, what: str, columns: Tensor | None = None):
    """(rows, cols, values), grouped by row: this shard's entries among the top k of each row of the group's whole
    pre-activations, given its own columns `pre` (N, L / S), or only `columns` of them (AuxK's dead latents). Each
    shard sends its own top k per row; the global top k lies among them."""
    num_rows = pre.shape[0]
    candidates = pre if columns is None else pre[:, columns]
    width = min(k, candidates.shape[1])
    values, cols = top_k_per_row(candidates, width)  # (N, width)
    if width < k:  # every shard sends (N, k); -inf is never picked while k real candidates remain
        values = torch.cat([values, values.new_full((num_rows, k - width), -math.inf)], 1)
        cols = torch.cat([cols, cols.new_zeros((num_rows, k - width))], 1)
    gathered = _all_gather(values, shards.group, what)  # (S, N, k)
    _, picked = gathered.permute(1, 0, 2).reshape(num_rows, -1).topk(k, dim=-1, sorted=False)  # (N, k)
    mine = torch.zeros(num_rows, shards.count * k, dtype=torch.bool, device=pre.device).scatter_(1, picked, True)
    mine = mine[:, shards.index * k : (shards.index + 1) * k]  # (N, k): which of this shard's candidates won
    rows = torch.arange(num_rows, device=pre.device).unsqueeze(1).expand(-1, k)[mine]
    cols = cols[mine]
    return rows, (cols if columns is None else columns[cols]), values[mine]


def merged_batch_top_k(pre: Tensor, k: int, shards: FeatureShards):
    """This shard's entries among the k N largest of the group's whole (N, L) pre-activations, with `batch_top_k`'s
    tie rule (the last places go to the entries first in row-major order of the whole batch): each shard sends its
    own k N largest; the global k N largest lie among them."""
    num_rows, width = pre.shape
    total = k * num_rows
    rows, cols, values = batch_top_k(pre, k)  # at most k N entries, by row then col
    padded = torch.cat([values, values.new_full((total - values.numel(),), -math.inf)])
    gathered = _all_gather(padded, shards.group, "batchtopk_candidates")  # (S, k N)
    threshold = gathered.flatten().kthvalue(gathered.numel() - total + 1).values
    keep, tied = values > threshold, values == threshold
    needed, ties = total - int((gathered > threshold).sum()), int((gathered == threshold).sum())
    if needed >= ties:
        keep |= tied
    elif needed > 0:  # ties are rare: their global row-major positions travel only then
        flat = rows * (width * shards.count) + cols + shards.index * width
        most = int((gathered == threshold).sum(1).max())
        mine = torch.cat([flat[tied], flat.new_full((most - int(tied.sum()),), torch.iinfo(torch.long).max)])
        cutoff = _all_gather(mine, shards.group, "batchtopk_ties").flatten().kthvalue(needed).values
        keep |= tied & (flat <= cutoff)
    return rows[keep], cols[keep], values[keep]


def _selection(sae: SaeModel, shards: FeatureShards, dead: Tensor | None, k_aux: int, split: list[int]):
    """The shard's select function: the architecture's own where it is per latent, the merged top k otherwise;
    AuxK's merged entries appended, their start recorded in `split`."""
    cfg = sae.config
    if cfg.architecture == "topk":
        main = lambda pre: merged_top_k(pre, cfg.k, shards, "topk_candidates")  # noqa: E731
    elif cfg.architecture == "batchtopk":
        main = lambda pre: merged_batch_top_k(pre, cfg.k, shards)  # noqa: E731
    else:
        main = sae.architecture.select(sae)
    if not k_aux:
        return main
    dead_cols = dead.nonzero().squeeze(1)

    def with_aux(pre: Tensor):
        rows, cols, values = main(pre)
        split.append(rows.numel())
        aux = merged_top_k(pre, k_aux, shards, "auxk_candidates", dead_cols)
        return tuple(torch.cat([a, b]) for a, b in zip((rows, cols, values), aux))

    return with_aux


# ---- the forward of one shard ---------------------------------------------------------------------------------------


def sum_over_shards(partial: Tensor, shards: FeatureShards, what: str) -> Tensor:
    return _SumOverShards.apply(partial, shards.group, what)


def _penalties(sae: SaeModel, shards: FeatureShards, target: Tensor, pre: SparseCode, z: SparseCode,
               coefficient: float) -> dict[str, Tensor]:  # fmt: skip
    """The architecture's penalties over all latents: each a sum over latents, summed over shards; the gated SAE's
    auxiliary loss from the summed gate reconstruction (Rajamanoharan et al. 2024, eq. 8)."""
    arch = sae.architecture
    if arch.penalty is None:
        return {}
    local = arch.penalty(sae, target, pre, z, coefficient)
    losses = {name: sum_over_shards(value, shards, "penalties") for name, value in local.items()
              if name != "auxiliary_loss"}  # fmt: skip
    if "auxiliary_loss" in local:
        via_gate = sum_over_shards(pre.decode(sae.W_dec.detach()), shards, "gate_reconstruction") + sae.b_dec.detach()
        losses["auxiliary_loss"] = (via_gate.to(target.dtype) - target).pow(2).sum(-1).mean()
    return losses


@torch.no_grad()
def _track_threshold(sae: SaeModel, z: SparseCode, shards: FeatureShards) -> None:
    """BatchTopK's inference threshold from the smallest kept activation of the whole group."""
    positive = z.values[z.values > 0]
    smallest = positive.min().float() if positive.numel() else z.values.new_tensor(math.inf, dtype=torch.float32)
    smallest = all_reduce_counted(smallest.reshape(1), shards.group, "threshold", dist.ReduceOp.MIN)
    if torch.isfinite(smallest).all():
        _track_batchtopk_threshold(sae, SparseCode(smallest.long(), smallest.long(), smallest, 1))


def sharded_forward(sae: SaeModel, shards: FeatureShards, x: Tensor, target: Tensor | None, dead: Tensor | None,
                    coefficient: float) -> SaeOutput:  # fmt: skip
    """A training step's forward of shard `sae` on the group's batch x (N, d_in), as `SaeModel.forward` with
    `return_loss=True`: loss, mse_loss, l0 and the penalties are the whole SAE's, the same on every shard;
    `latent_counts` and `dead` are this shard's latents."""
    cfg, arch = sae.config, sae.architecture
    flat = x.reshape(-1, cfg.d_in)
    num_rows = flat.shape[0]
    flat_target = flat if target is None else target.reshape(-1, cfg.d_out)
    skip = sae.skip(flat)
    explained = flat_target if skip is None else flat_target - skip.detach()
    k_aux = 0
    if arch.uses_k and dead is not None and cfg.auxk_coefficient:
        k_aux = _auxk_width(cfg, all_reduce_counted(dead.sum(), shards.group, "dead_count"))
    split: list[int] = []
    shift = sae._input_shift()
    shift = None if shift is None else _SumGradientOverShards.apply(shift, shards.group)
    rows, cols, values = SparseEncode.apply(flat, shift, sae.W_enc, sae.b_enc, _selection(sae, shards, dead, k_aux,
                                                                                          split))  # fmt: skip
    main = split[0] if k_aux else rows.numel()
    pre = SparseCode(rows[:main], cols[:main], values[:main], num_rows)
    z = arch.activate(sae, pre)
    if sae.training and arch.after_sparse_step is not None:
        _track_threshold(sae, z, shards)
    reconstruction = sum_over_shards(z.decode(sae.W_dec), shards, "reconstruction") + sae.b_dec.to(flat.dtype)
    losses = _penalties(sae, shards, explained, pre, z, coefficient)
    if k_aux:
        aux = SparseCode(rows[main:], cols[main:], values[main:].relu(), num_rows)
        aux_reconstruction = sum_over_shards(aux.decode(sae.W_dec), shards, "auxk_reconstruction")
        residual = (explained - reconstruction).detach()
        losses["auxiliary_loss"] = cfg.auxk_coefficient * _auxk_loss(explained, residual, aux_reconstruction)
    if skip is not None:
        reconstruction = reconstruction + skip
    mse_loss = (reconstruction - flat_target).pow(2).sum(-1).mean()
    counts = z.counts(sae.W_enc.shape[0])
    l0 = all_reduce_counted(counts.sum().float(), shards.group, "l0") / max(num_rows, 1)
    return SaeOutput(reconstruction=reconstruction.reshape(*x.shape[:-1], cfg.d_out), latent_counts=counts, l0=l0,
                     loss=mse_loss + sum(losses.values()), mse_loss=mse_loss, **losses)  # fmt: skip


# ---- the SAE cut into shards and joined again -----------------------------------------------------------------------


def sharded_axes(model: SaeModel | CltModel) -> dict[str, int]:
    """The tensors with one slice per latent, which each shard holds its slices of, by name, with their latent axis:
    an SAE's rows; a cross-layer transcoder's latents of every layer (axis 1 of its encoders and JumpReLU
    thresholds, `(n_layers, num_latents, ...)`, axis 0 of each layer's decoder `W_dec.{l}`)."""
    if isinstance(model, CltModel):
        axes = {"W_enc": 1, "b_enc": 1} | {f"W_dec.{layer}": 0 for layer in range(model.config.n_layers)}
        return axes | ({"threshold": 1} if model.config.architecture == "jumprelu" else {})
    extra = [e.name for e in model.architecture.extra_tensors if e.per_latent]
    return dict.fromkeys(["W_enc", "b_enc", "W_dec", *extra], 0)


def sharded_names(model: SaeModel | CltModel) -> list[str]:
    return list(sharded_axes(model))


def new_shard(config: SaeConfig, shards: FeatureShards, name: str | None = None) -> SaeModel:
    """This shard's rows of the SAE that `SaeModel(config)` builds from the same RNG state (`initial_tensors`), no
    tensor of the whole SAE's rows ever allocated; its config still names the whole SAE. One shard: the whole SAE."""
    if shards.count == 1:
        return SaeModel(config)
    check_shardable(config, shards.count, name or config.hookpoint)
    with torch.device("meta"):
        sae = SaeModel(config)
    for key, tensor in initial_tensors(config, *shards.latent_range(config.num_latents)).items():
        tensor = tensor.clone()  # W_enc and W_dec start from the same directions
        setattr(sae, key, torch.nn.Parameter(tensor) if key in sae._parameters else tensor)
    return sae


@torch.no_grad()
def shard_sae_(model: SaeModel | CltModel, shards: FeatureShards) -> SaeModel | CltModel:
    """Keep only this shard's slices of the per-latent tensors of `model` (an SAE or a cross-layer transcoder), in
    place (its config still names the whole); a model already cut to them (`new_shard`) stays as it is."""
    start, stop = shards.latent_range(model.config.num_latents)
    axes = sharded_axes(model)
    if model.W_enc.shape[axes["W_enc"]] == stop - start < model.config.num_latents:
        return model
    for name, axis in axes.items():
        replace_tensor(model, name, model.get_parameter(name).detach().narrow(axis, start, stop - start).clone())
    return model


def replace_tensor(model: torch.nn.Module, name: str, tensor: Tensor) -> None:
    """Make `tensor` the parameter or buffer `name` of `model` (`W_dec.0`: entry "0" of the ParameterList), whatever
    its shape was."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    setattr(module, attr, torch.nn.Parameter(tensor) if attr in module._parameters else tensor)


def gather_shards(model: SaeModel | CltModel, shards: FeatureShards) -> SaeModel | CltModel | None:
    """The whole model on the main process (None elsewhere), joined from the shards of data replica 0."""
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()} if shards.data_index == 0 else None
    parts = gather_to_main(state)
    if parts is None:
        return None
    pieces, axes = [part for part in parts if part is not None], sharded_axes(model)
    whole = {name: torch.cat([p[name] for p in pieces], axes[name]) if name in axes else pieces[0][name]
             for name in pieces[0]}  # fmt: skip
    with torch.device("meta"):
        joined = type(model)(model.config)
    joined.load_state_dict(whole, strict=True, assign=True)
    return joined.eval()


# ---- gradients ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def average_over_data(sae: SaeModel | CltModel, shards: FeatureShards) -> None:
    """Average each gradient over the data axis: the shards holding the same rows saw different tokens."""
    if shards.data_count == 1:
        return
    for param in sae.parameters():
        if param.grad is not None:
            all_reduce_counted(param.grad, shards.data_group, "data_gradients").div_(shards.data_count)


@torch.no_grad()
def clip_sharded_grad_norm_(sae: SaeModel | CltModel, max_norm: float, shards: FeatureShards) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the whole SAE: the shards' rows counted once each, the tensors every
    shard holds whole counted once. Returns the norm before clipping."""
    sharded, squares = set(sharded_names(sae)), []
    local = torch.zeros((), device=sae.W_enc.device)
    whole = torch.zeros((), device=sae.W_enc.device)
    for name, param in sae.named_parameters():
        if param.grad is not None:
            squares.append(param.grad)
            if name in sharded:
                local += param.grad.float().pow(2).sum()
            else:
                whole += param.grad.float().pow(2).sum()
    norm = (all_reduce_counted(local, shards.group, "gradient_norm") + whole).sqrt()
    if math.isfinite(max_norm):
        coefficient = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for grad in squares:
            grad.mul_(coefficient.to(grad.dtype))
    return norm
