"""Feature sharding of a cross-layer transcoder with real processes (gloo on the CPU): each test first proves the world
size and shard count it claims, from what every process reported."""

import json
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import TOLERANCE, common_flags, launch_all, ran
from test_feature_shards import assert_half_with_moments, lm_never_loads, shards_built_like_the_whole  # noqa: F401
from test_training import tiny_run_inputs  # noqa: F401  (the module-scoped fixture)

import hf_sae.clt_shards
import hf_sae.memory
from hf_sae import ArgumentError, CltConfig, CltModel
from hf_sae.arguments import TRAIN_GROUPS, group_arguments
from hf_sae.clt_shards import new_clt_shard
from hf_sae.distribution import local_launch
from hf_sae.memory import TRAINING_BYTES_PER_WEIGHT, clt_weights
from hf_sae.runners import train_saes

REPO = Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "clt_shard_worker.py")
ARCHITECTURES = ("topk", "batchtopk", "jumprelu")
RTOL = 1e-6  # float32 sums in another order, relative to the largest magnitude of each tensor (or 1)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("clt_two_shards")
    [done] = launch_all([[*local_launch(2), WORKER, str(out)]])
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [(r["rank"], r["world"], r["shards"], r["index"]) for r in reports] == [(0, 2, 2, 0), (1, 2, 2, 1)]
    return reports


def test_two_shards_step_as_the_whole_clt(two_shards):
    """Loss and each of its terms, l0, the prediction of every layer, the latents and the gradient of each shard's
    slices (every layer's encoder, every decoder, JumpReLU's thresholds) match the whole transcoder's training step on
    the same batch; BatchTopK's per-layer thresholds move as the whole's."""
    for report in two_shards:
        for architecture in ARCHITECTURES:
            diff = dict(report[architecture])
            assert diff.pop("counts_equal") is True, architecture
            diff.pop("bytes")
            whole, shard = diff.pop("parameters")
            assert {term: value for term, value in diff.items() if value > RTOL} == {}, architecture
            # each shard holds half of every parameter but b_dec (3 layers x 6 outputs), which it holds whole
            assert shard - 18 == (whole - 18) // 2, architecture
        assert {"sparsity_loss", "pre_act_loss", "grad_threshold"} <= set(report["jumprelu"])
        assert "threshold" in report["batchtopk"] and {"grad_W_dec.0", "grad_W_dec.2"} <= set(report["topk"])


def test_bytes_each_collective_moves(two_shards):
    """Per step and process: k candidates per token and layer (TopK), k N per layer (BatchTopK), the (N, n_layers,
    d_out) prediction, a threshold per layer; nothing of num_latents x d_in."""
    tokens, layers, k, d_out = 10, 3, 3, 6
    moved = {architecture: two_shards[0][architecture]["bytes"] for architecture in ARCHITECTURES}
    assert moved["topk"] == {"topk_candidates": 4 * tokens * layers * k, "reconstruction": 4 * tokens * layers * d_out,
                             "l0": 4}  # fmt: skip
    assert moved["batchtopk"]["batchtopk_candidates"] == 4 * tokens * layers * k
    assert moved["batchtopk"]["threshold"] == 4 * layers
    assert moved["jumprelu"] == {"reconstruction": 4 * tokens * layers * d_out, "l0": 4, "penalties": 8}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_shard_builds_only_its_latents_of_the_unsharded_initialisation(monkeypatch, architecture):
    """Each of 2 (and 3) shards built from the seed of the whole transcoder holds exactly its latents of it, every
    layer's encoder and decoder drawn in chunks of 16 values, and the largest storage it allocates holds its part of
    the encoders, never the whole's."""
    monkeypatch.setattr(hf_sae.clt_shards, "INIT_CHUNK_VALUES", 16)
    config = CltConfig(n_layers=4, d_in=7, d_out=5, num_latents=36, architecture=architecture,
                       k=None if architecture == "jumprelu" else 3)  # fmt: skip
    built = shards_built_like_the_whole(lambda: CltModel(config), lambda shards: new_clt_shard(config, shards), 3)
    for shard, latents, largest in built:
        assert shard.W_enc.shape == (4, latents, 7)
        assert largest == 4 * 4 * latents * 7 < 4 * 4 * 36 * 7


# ---- training runs --------------------------------------------------------------------------------------------------

CLT_FLAGS = ("--clt", "true", "--clt_layers", "0-2", "--num_latents", "32")
RUNS = {"topk": ("--k", "4"), "batchtopk": ("--k", "4", "--batch_size", "124", "--gradient_accumulation_steps", "2",
        "--train_tokens", "1240"), "jumprelu": ("--sparsity_coefficient", "0.01")}  # fmt: skip


def train(root: Path, out: Path, processes: int, shards: int, *flags: str):
    """`hf-sae train --clt` on the tiny model's 3 layers: one process, or `processes` with `shards` feature shards."""
    common = [f for f in common_flags(root) if f not in ("--hookpoints", "model.layers.1")]
    command = [sys.executable, "-m", "hf_sae.cli", "train", *common, *CLT_FLAGS, *flags, "--output_dir", str(out),
               "--num_processes", str(processes), "--shard_features", str(shards)]  # fmt: skip
    [result] = launch_all([command])
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, processes) == set(range(processes))  # each process reported its rank in its world
    for index in range(shards if shards > 1 else 0):
        assert f"is feature shard {index} of {shards}" in result.stderr
    return result


def saved_clt(out: Path) -> CltModel:
    assert (out / "config.json").is_file() and (out / "metrics.json").is_file()  # an unsharded run's folder
    return CltModel.from_pretrained(out)


@pytest.fixture(scope="module")
def sharded_topk(tiny_run_inputs, tmp_path_factory) -> Path:  # noqa: F811
    """A TopK transcoder trained on 2 feature shards, with a checkpoint at step 10 (of 20)."""
    out = tmp_path_factory.mktemp("clt_topk") / "two"
    train(tiny_run_inputs, out, 2, 2, "--architecture", "topk", *RUNS["topk"], "--save_steps", "10")
    return out


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_two_feature_shards_train_the_clt_of_one_process(tiny_run_inputs, tmp_path, sharded_topk,  # noqa: F811
                                                         architecture):  # fmt: skip
    """The same batches (the two shards' halves gathered in rank order), the same initial transcoder: the joined
    shards end as the one process's transcoder, within float32 reordering, saved as an unsharded run's folder."""
    flags = ("--architecture", architecture, *RUNS[architecture])
    train(tiny_run_inputs, tmp_path / "one", 1, 1, *flags)
    if architecture == "topk":
        shutil.copytree(sharded_topk, tmp_path / "two", ignore=shutil.ignore_patterns("checkpoint-*"))
    else:
        train(tiny_run_inputs, tmp_path / "two", 2, 2, *flags)
    one, two = saved_clt(tmp_path / "one"), saved_clt(tmp_path / "two")
    assert one.config.to_diff_dict() == two.config.to_diff_dict() and two.config.num_latents == 32
    assert not torch.equal(two.W_enc, CltModel(two.config).W_enc)  # it trained
    for name, tensor in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], tensor, **TOLERANCE, msg=name)
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text())["clt"] for run in ("one", "two")]
    for key in ("train_dead_fraction", "train_never_fired_fraction"):
        assert metrics[1][key] == pytest.approx(metrics[0][key])


def test_shard_checkpoints_hold_half_the_clt_and_resume_exactly(tiny_run_inputs, tmp_path, sharded_topk):  # noqa: F811
    """Each rank's checkpoint holds its 16 of the 32 latents of every layer and their Adam moments (counted); a run
    resumed from step 10 ends as the uninterrupted run; resuming with another shard count is refused, naming both."""
    checkpoint, whole = sharded_topk / "checkpoint-10", saved_clt(sharded_topk)
    for rank in (0, 1):
        shapes = {"W_enc": (3, 16, 24), "b_enc": (3, 16), "W_dec.0": (16, 3, 24), "W_dec.1": (16, 2, 24),
                  "W_dec.2": (16, 1, 24)}  # fmt: skip
        assert_half_with_moments(checkpoint / f"weights_rank{rank}.pt", whole, shapes)
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / checkpoint.name)
    train(tiny_run_inputs, resumed, 2, 2, "--architecture", "topk", "--k", "4", "--resume_from_checkpoint", "latest")
    for name, tensor in whole.state_dict().items():
        assert torch.equal(saved_clt(resumed).state_dict()[name], tensor), name
    common = [f for f in common_flags(tiny_run_inputs) if f not in ("--hookpoints", "model.layers.1")]
    other = [sys.executable, "-m", "hf_sae.cli", "train", *common, *CLT_FLAGS, "--k", "4", "--num_processes", "2",
             "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / checkpoint.name)]  # fmt: skip
    [refused] = launch_all([other])
    assert refused.returncode != 0
    assert "written with --shard_features 2; this run has --shard_features 1" in refused.stderr


# ---- refused before the LM loads -----------------------------------------------------------------------------------


def train_tiny_clt(root: Path, out: Path, **flat):
    flat = {"clt": True, "architecture": "topk", "k": 4, "shard_features": 2, "num_processes": 2, "context_size": 32,
            "model_name_or_path": str(root / "lm"), "train_tokens": 8192, "batch_size": 256,
            "shuffle_buffer_tokens": 2048, **flat}  # fmt: skip
    return train_saes(*group_arguments(TRAIN_GROUPS, output_dir=str(out), report_to="none", **flat))


def test_a_latent_count_from_the_expansion_factor_is_checked_before_the_lm_loads(
    tiny_run_inputs,  # noqa: F811
    tmp_path,
    lm_never_loads,  # noqa: F811
):
    """0.875 x the tiny LM's hidden size 24 (read from its config) is 21 latents per layer, which 2 shards do not
    divide."""
    message = ("--shard_features 2 needs a latent count that 2 divides; the cross-layer transcoder has 21 latents. "
               "Use --num_latents 20 or 22")  # fmt: skip
    with pytest.raises(ArgumentError, match=re.escape(message)):
        train_tiny_clt(tiny_run_inputs, tmp_path / "run", expansion_factor=0.875)


def test_a_clt_refused_on_one_process_passes_the_memory_check_over_shards(tiny_run_inputs, tmp_path, lm_never_loads,  # noqa: F811
                                                                          monkeypatch):  # fmt: skip
    """A machine whose memory holds half of a 3-layer transcoder: refused whole, naming its need; over 2 shards
    the check passes (and the run goes on to load the LM), over 2 shards of a twice wider one it is refused naming
    the per-process need."""
    latents, width, buffer = 4096, 24, 4 * (2048 + 256) * 2 * 3 * 24
    whole = TRAINING_BYTES_PER_WEIGHT * clt_weights(3, latents, width) + buffer
    monkeypatch.setattr(hf_sae.memory, "memory_bytes", lambda device=None: whole * 3 // 4)
    with pytest.raises(ArgumentError, match=re.escape(f"({whole:,} bytes) to train, more than the")):
        train_tiny_clt(tiny_run_inputs, tmp_path / "one", num_latents=latents, shard_features=1, num_processes=1)
    with pytest.raises(AssertionError, match="the LM was loaded"):  # every check passed
        train_tiny_clt(tiny_run_inputs, tmp_path / "two", num_latents=latents)
    half = TRAINING_BYTES_PER_WEIGHT * clt_weights(3, latents, width) + buffer  # 2 x wider, halved
    message = (f"3 layers x {2 * latents:,} latents split over 2 feature shards, {latents:,} latents per layer on "
               f"each process (d_in 24: {clt_weights(3, latents, width):,} weights per process, 16 bytes each to "
               f"train and 0.0 GiB of buffered activations) needs about 0.0 GiB ({half:,} bytes)")  # fmt: skip
    monkeypatch.setattr(hf_sae.memory, "memory_bytes", lambda device=None: half - 1)
    with pytest.raises(ArgumentError, match=re.escape(message)):
        train_tiny_clt(tiny_run_inputs, tmp_path / "wide", num_latents=2 * latents)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_accelerate_launch_starts_two_feature_shards(tiny_run_inputs, tmp_path, sharded_topk):  # noqa: F811
    """`accelerate launch --multi_gpu --num_processes 2` starts two real processes on a machine without GPUs (torchrun
    underneath, gloo; `--cpu` would start one): each is a shard in a world of 2, and they train the transcoder that
    torchrun's two shards train."""
    common = [f for f in common_flags(tiny_run_inputs) if f not in ("--hookpoints", "model.layers.1")]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
                "127.0.0.1", "--main_process_port", str(free_port())]  # fmt: skip
    command = [*launcher, str(REPO / "scripts" / "train_sae.py"), *common, *CLT_FLAGS, "--architecture", "topk",
               *RUNS["topk"], "--shard_features", "2", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    [result] = launch_all([command])
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, 2) == {0, 1}  # two real processes, each in a world of 2
    assert "feature shard 0 of 2" in result.stderr and "feature shard 1 of 2" in result.stderr
    launched, by_torchrun = saved_clt(tmp_path / "run"), saved_clt(sharded_topk)
    for name, tensor in by_torchrun.state_dict().items():
        torch.testing.assert_close(launched.state_dict()[name], tensor, **TOLERANCE, msg=name)
