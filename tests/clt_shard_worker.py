"""One process of tests/test_clt_shards.py's exactness check, started by torchrun (gloo): a cross-layer transcoder's
sharded training forward and backward against the whole transcoder's on the same batch, for each architecture.
Writes `rank{r}.json` (what this rank saw and every difference) into the folder given as the first argument."""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from feature_shard_worker import relative

from hf_sae import CltConfig, CltModel
from hf_sae.clt_shards import sharded_clt_forward
from hf_sae.feature_shards import BYTES_MOVED, feature_mesh, shard_sae_, sharded_axes

LAYERS, D_IN, D_OUT, LATENTS, TOKENS, K = 3, 8, 6, 16, 10, 3


def whole_and_shard(architecture: str, shards) -> tuple[CltModel, CltModel]:
    torch.manual_seed(0)  # the same transcoder on every rank
    k = {"k": K} if architecture != "jumprelu" else {"pre_act_coefficient": 0.3}
    clt = CltModel(CltConfig(n_layers=LAYERS, d_in=D_IN, d_out=D_OUT, num_latents=LATENTS, architecture=architecture,
                             sparsity_coefficient=0.1, **k)).train()  # fmt: skip
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.3)
        clt.b_dec.normal_(0, 0.3)
        if architecture == "jumprelu":
            clt.threshold.uniform_(0.0, 0.3)
    return clt, shard_sae_(copy.deepcopy(clt), shards)


def compare_step(architecture: str, shards) -> dict:
    """Differences between the whole transcoder's training step and the shard's, on the shard's latents."""
    whole, shard = whole_and_shard(architecture, shards)
    start, stop = shards.latent_range(LATENTS)
    torch.manual_seed(1)
    x, target = torch.randn(TOKENS, LAYERS, D_IN) * 2, torch.randn(TOKENS, LAYERS, D_OUT)
    out = whole(x, target, return_loss=True, sparsity_coefficient=0.1)
    out.loss.backward()
    BYTES_MOVED.clear()
    mine = sharded_clt_forward(shard, shards, x, target, 0.1)
    mine.loss.backward()
    diff = {"bytes": dict(BYTES_MOVED)}
    for term in ("loss", "mse_loss", "sparsity_loss", "pre_act_loss", "l0", "reconstruction"):
        if getattr(out, term) is not None:
            diff[term] = relative(getattr(out, term), getattr(mine, term))
    diff["counts_equal"] = torch.equal(out.latent_counts[:, start:stop], mine.latent_counts)
    diff["latents"] = relative(out.latents[..., start:stop], mine.latents)
    axes = sharded_axes(whole)
    for name, param in whole.named_parameters():
        expected = param.grad.narrow(axes[name], start, stop - start) if name in axes else param.grad
        diff[f"grad_{name}"] = relative(expected, shard.get_parameter(name).grad)
    if architecture == "batchtopk":
        diff["threshold"] = relative(whole.threshold, shard.threshold)
    diff["parameters"] = [sum(p.numel() for p in model.parameters()) for model in (whole, shard)]
    return diff


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    shards = feature_mesh(dist.get_world_size())
    report = {"rank": dist.get_rank(), "world": dist.get_world_size(), "shards": shards.count, "index": shards.index}
    for architecture in ("topk", "batchtopk", "jumprelu"):
        report[architecture] = compare_step(architecture, shards)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
