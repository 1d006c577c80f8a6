"""One process of tests/test_feature_shards.py's exactness check, started by torchrun (gloo): every architecture's
sharded forward and backward against the whole SAE's on the same batch, and the merged selections against the dense
ones. Writes `rank{r}.json` (what this rank saw and every difference) into the folder given as the only argument."""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hf_sae import SaeConfig, SaeModel
from hf_sae.feature_shards import (
    BYTES_MOVED,
    feature_mesh,
    merged_batch_top_k,
    merged_top_k,
    shard_sae_,
    sharded_forward,
    sharded_names,
)
from hf_sae.selection import reference_batch_top_k

D_IN, LATENTS, TOKENS = 16, 64, 24


def whole_and_shard(architecture: str, shards, **extra) -> tuple[SaeModel, SaeModel]:
    torch.manual_seed(0)  # the same SAE on every rank
    k = {"k": 4} if architecture in ("topk", "batchtopk") else {}
    sae = SaeModel(SaeConfig(d_in=D_IN, num_latents=LATENTS, architecture=architecture, **k, **extra)).train()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        for name in ("r_mag", "b_mag"):
            if hasattr(sae, name):
                getattr(sae, name).normal_(0, 0.3)
        if sae.config.is_transcoder:  # its decoder starts at zero
            sae.W_dec.normal_(0, 0.3)
        if architecture == "jumprelu":
            sae.threshold.uniform_(0.0, 0.4)
    return sae, shard_sae_(copy.deepcopy(sae), shards)


def relative(expected: torch.Tensor, got: torch.Tensor) -> float:
    """The largest difference, relative to the largest expected magnitude (at least 1)."""
    return ((expected - got).abs().max() / expected.abs().max().clamp_min(1)).item()


def compare_step(architecture: str, shards, **extra) -> dict:
    """Differences between the whole SAE's step and the shard's, on the shard's rows."""
    whole, shard = whole_and_shard(architecture, shards, **extra)
    start, stop = shards.latent_range(LATENTS)
    torch.manual_seed(1)
    x = torch.randn(TOKENS, D_IN) * 2
    target = torch.randn(TOKENS, whole.config.d_out) if whole.config.is_transcoder else None
    dead = torch.arange(LATENTS) % 3 == 0  # AuxK for the k family
    out = whole(x, target, dead_latents=dead, return_latents=False, return_loss=True, sparsity_coefficient=0.1)
    out.loss.backward()
    BYTES_MOVED.clear()
    mine = sharded_forward(shard, shards, x, target, dead[start:stop], 0.1)
    mine.loss.backward()
    diff = {"bytes": dict(BYTES_MOVED)}
    for term in ("loss", "mse_loss", "sparsity_loss", "auxiliary_loss", "l0", "reconstruction"):
        if getattr(out, term) is not None:
            diff[term] = relative(getattr(out, term), getattr(mine, term))
    diff["counts_equal"] = torch.equal(out.latent_counts[start:stop], mine.latent_counts)
    sharded = set(sharded_names(whole))
    for name, param in whole.named_parameters():
        expected = param.grad[start:stop] if name in sharded else param.grad
        diff[f"grad_{name}"] = relative(expected, getattr(shard, name).grad)
    if architecture == "batchtopk":
        diff["threshold"] = (whole.threshold - shard.threshold).abs().item()
    return diff


def compare_selections(shards) -> dict:
    """Merged TopK and BatchTopK (with many ties) against the dense selection of the whole batch."""
    torch.manual_seed(2)
    pre = torch.randn(TOKENS, LATENTS)
    tied = (torch.randn(TOKENS, LATENTS) * 2).round() / 2  # few distinct values: ties at every threshold
    start, stop = shards.latent_range(LATENTS)
    result = {}
    rows, cols, values = merged_top_k(pre[:, start:stop].contiguous(), 4, shards, "topk_candidates")
    found = torch.zeros(TOKENS, LATENTS, dtype=torch.bool)
    found[rows, cols + start] = True
    everyone = torch.stack([torch.empty_like(found) for _ in range(shards.count)])
    dist.all_gather(list(everyone), found, group=shards.group)
    dense = torch.zeros_like(found).scatter_(1, pre.topk(4, dim=-1).indices, True)
    result["topk_equal"] = torch.equal(everyone.any(0), dense) and int(everyone.sum()) == TOKENS * 4
    for name, batch in (("batchtopk", pre), ("batchtopk_ties", tied)):
        rows, cols, _ = merged_batch_top_k(batch[:, start:stop].contiguous(), 3, shards)
        found = torch.zeros(TOKENS, LATENTS, dtype=torch.bool)
        found[rows, cols + start] = True
        dist.all_gather(list(everyone), found, group=shards.group)
        ref_rows, ref_cols, _ = reference_batch_top_k(batch, 3)
        dense = torch.zeros_like(found)
        dense[ref_rows, ref_cols] = True
        result[f"{name}_equal"] = torch.equal(everyone.any(0), dense) and int(everyone.sum()) == TOKENS * 3
    return result


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    shards = feature_mesh(int(sys.argv[2]) if len(sys.argv) > 2 else dist.get_world_size())
    report = {"rank": dist.get_rank(), "world": dist.get_world_size(), "shards": shards.count, "index": shards.index,
              "selections": compare_selections(shards)}  # fmt: skip
    for architecture in ("topk", "batchtopk", "jumprelu", "relu", "gated"):
        report[architecture] = compare_step(architecture, shards)
    report["skip_transcoder"] = compare_step(
        "topk", shards, skip_connection=True, output_hookpoint="out", d_out=12, apply_b_dec_to_input=False
    )
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
