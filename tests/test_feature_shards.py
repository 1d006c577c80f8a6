"""Feature sharding with real processes (gloo on the CPU). Each test first proves the world size and shard count it
claims, from what every process reported."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import HOOKPOINT, SCRIPT, assert_same_weights, common_flags, launch_all, ran, trained
from test_training import tiny_run_inputs  # noqa: F401  (the module-scoped fixture)
from torch.utils._python_dispatch import TorchDispatchMode

import hf_sae.architectures
import hf_sae.memory
from hf_sae import ArgumentError, SaeConfig, SaeModel
from hf_sae.architectures import initial_directions
from hf_sae.arguments import TRAIN_GROUPS, group_arguments
from hf_sae.distribution import local_launch
from hf_sae.feature_shards import new_shard, planned_shard, sharded_axes
from hf_sae.runners import train_saes

REPO = Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "feature_shard_worker.py")
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu", "gated", "skip_transcoder")
# Float32 sums in another order: the shards' partial reconstructions and gradients add up in a different sequence.
# Differences are relative to the largest magnitude of each tensor (or 1).
RTOL = 1e-6


def run_worker(out: Path, processes: int, shards: int) -> list[dict]:
    [done] = launch_all([[*local_launch(processes), WORKER, str(out), str(shards)]])
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(processes)]
    seen = [(report["rank"], report["world"], report["shards"]) for report in reports]
    assert seen == [(rank, processes, shards) for rank in range(processes)]
    return reports


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> list[dict]:
    return run_worker(tmp_path_factory.mktemp("two_shards"), 2, 2)


def test_two_shards_step_as_the_whole_sae(two_shards):
    """Loss, every penalty, l0, the reconstruction and every gradient of each shard's rows match the whole SAE's
    forward and backward on the same batch, for every architecture (AuxK on the k family, a skip transcoder)."""
    assert [r["index"] for r in two_shards] == [0, 1]
    for report in two_shards:
        for architecture in ARCHITECTURES:
            diff = dict(report[architecture])
            assert diff.pop("counts_equal") is True, architecture
            diff.pop("bytes")
            assert {term: value for term, value in diff.items() if value > RTOL} == {}, architecture
        for architecture in ("topk", "batchtopk", "gated"):  # the terms that prove the penalties and AuxK were there
            assert {"loss", "mse_loss", "grad_W_enc", "grad_W_dec", "grad_b_dec"} <= set(report[architecture])
        assert "auxiliary_loss" in report["topk"] and "sparsity_loss" in report["jumprelu"]
        assert "grad_W_skip" in report["skip_transcoder"] and "grad_threshold" in report["jumprelu"]


def test_merged_selections_equal_the_dense_ones(two_shards):
    """TopK's merged top k and BatchTopK's global threshold pick exactly the dense selection's entries, with
    BatchTopK's tie rule on a batch of few distinct values."""
    for report in two_shards:
        assert report["selections"] == {"topk_equal": True, "batchtopk_equal": True, "batchtopk_ties_equal": True}


def test_bytes_each_collective_moves(two_shards):
    """Per step and process, as docs/scaling.md counts them: N k values of TopK candidates, N k_aux of AuxK's, N d_out
    floats of reconstruction (and of the AuxK reconstruction), a (d_in,) b_dec gradient; nothing of num_latents x d_in
    (here 64 x 16 floats, 4,096 bytes)."""
    tokens, d_in, k, k_aux, d_out = 24, 16, 4, 8, 12
    moved = two_shards[0]["topk"]["bytes"]
    assert moved == {"topk_candidates": 4 * tokens * k, "auxk_candidates": 4 * tokens * k_aux,
                     "reconstruction": 4 * tokens * d_in, "auxk_reconstruction": 4 * tokens * d_in,
                     "b_dec_gradient": 4 * d_in, "dead_count": 8, "l0": 4}  # fmt: skip
    assert two_shards[0]["batchtopk"]["bytes"]["batchtopk_candidates"] == 4 * tokens * k
    assert two_shards[0]["skip_transcoder"]["bytes"]["reconstruction"] == 4 * tokens * d_out
    assert max(max(r[a]["bytes"].values()) for r in two_shards for a in ARCHITECTURES) < 4 * 64 * d_in


def test_a_shard_count_that_does_not_divide_the_processes_is_refused(tmp_path):
    [done] = launch_all([[*local_launch(2), WORKER, str(tmp_path), "3"]])
    assert done.returncode != 0
    assert "--shard_features 3 splits each SAE's latents over 3 processes, but this run has 2" in done.stderr


class StorageSizes(TorchDispatchMode):
    """The bytes of every storage that an operation inside it returns a tensor of (meta tensors hold none)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self.sizes.append(tensor.untyped_storage().nbytes())
        return out


TRANSCODER = {"skip_connection": True, "output_hookpoint": "out", "d_out": 12, "apply_b_dec_to_input": False}
SHARD_CONFIGS = {"topk": {"architecture": "topk", "k": 4}, "jumprelu": {"architecture": "jumprelu"},
                 "gated": {"architecture": "gated"}, "batchtopk": {"architecture": "batchtopk", "k": 4},
                 "skip_transcoder": {"architecture": "topk", "k": 4, **TRANSCODER}}  # fmt: skip


def shards_built_like_the_whole(build_whole, build_shard, seed: int):
    """Each of 2 (and 3) shards that `build_shard(shards)` builds from `seed`, checked to hold exactly its latents of
    the model `build_whole()` builds from the same seed; yields (shard, its latent count, the largest storage that
    building it allocated)."""
    torch.manual_seed(seed)
    whole = build_whole()
    axes = sharded_axes(whole)
    for count in (2, 3):
        for index in range(count):
            shards = planned_shard(count, index)
            start, stop = shards.latent_range(whole.config.num_latents)
            torch.manual_seed(seed)
            with StorageSizes() as allocated:
                shard = build_shard(shards)
            for key, tensor in whole.state_dict().items():
                mine = tensor.narrow(axes[key], start, stop - start) if key in axes else tensor
                assert torch.equal(shard.state_dict()[key], mine), (count, index, key)
            yield shard, stop - start, max(allocated.sizes)


@pytest.mark.parametrize("name", list(SHARD_CONFIGS))
def test_a_shard_builds_only_its_rows_of_the_unsharded_initialisation(name):
    """Each of 2 (and 3) shards built from the seed of the whole SAE holds exactly its rows of it, and the largest
    storage it allocates holds its rows, never the 96 x 24 of the whole."""
    config = SaeConfig(d_in=24, num_latents=96, **SHARD_CONFIGS[name])
    built = shards_built_like_the_whole(lambda: SaeModel(config), lambda shards: new_shard(config, shards), 7)
    for shard, rows, largest in built:
        assert shard.W_enc.shape == (rows, 24) and shard.W_enc.device.type == "cpu"
        assert largest == 4 * rows * 24 < 4 * 96 * 24


def test_the_initialisation_drawn_in_chunks_is_one_draw_of_the_whole(monkeypatch):
    """Rows drawn in chunks of any size (aligned to torch's blocks of 16 values) equal one `torch.randn` of the whole
    matrix, for widths that are not multiples of 16 and matrices of fewer than 16 values."""
    for chunk in (16, 40, 2**22):
        monkeypatch.setattr(hf_sae.architectures, "INIT_CHUNK_VALUES", chunk)
        for latents, d_in in ((96, 24), (100, 7), (1001, 13), (97, 577), (5, 3)):
            torch.manual_seed(0)
            directions = torch.randn(latents, d_in)
            directions *= 0.1 / directions.norm(dim=-1, keepdim=True)
            for start, stop in (
                (0, latents),
                (0, latents // 2),
                (latents // 3, 2 * latents // 3),
                (latents - 1, latents),
            ):
                torch.manual_seed(0)
                rows = initial_directions(latents, d_in, 0.1, start, stop)
                assert torch.equal(rows, directions[start:stop]), (chunk, latents, d_in, start, stop)


if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__]))


# ---- training runs --------------------------------------------------------------------------------------------------


def train(root: Path, out: Path, processes: int, shards: int, *flags: str) -> subprocess.CompletedProcess:
    """`hf-sae train` on the tiny model: one process (scripts/train_sae.py), or `processes` with `shards` shards."""
    common = [*common_flags(root), *flags, "--output_dir", str(out)]
    if processes == 1:
        command = [sys.executable, SCRIPT, *common]
    else:
        command = [sys.executable, "-m", "hf_sae.cli", "train", *common, "--num_processes", str(processes),
                   "--shard_features", str(shards)]  # fmt: skip
    [result] = launch_all([command])
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, processes) == set(range(processes))  # each process reported its rank in its world
    return result


# AuxK from the third step on: latents that have not fired for 124 tokens count as dead.
# BatchTopK with two micro-batches a step: 4 blocks, rank r reading blocks r and r + 2 as one process reads them.
RUNS = {"topk": ("--dead_after_tokens", "124"),
        "batchtopk": ("--batch_size", "124", "--gradient_accumulation_steps", "2", "--train_tokens", "1240"),
        "jumprelu": ("--sparsity_coefficient", "0.01")}  # fmt: skip


@pytest.mark.parametrize("architecture", list(RUNS))
def test_two_feature_shards_train_the_sae_of_one_process(tiny_run_inputs, tmp_path, architecture):  # noqa: F811
    """The same batches (one document, blocks in order, the two shards' halves gathered in rank order), the same
    initial SAE: the joined shards end as the one process's SAE, saved as an unsharded run's folder."""
    flags = ("--architecture", architecture, *RUNS[architecture])
    train(tiny_run_inputs, tmp_path / "one", 1, 1, *flags)
    result = train(tiny_run_inputs, tmp_path / "two", 2, 2, *flags)
    assert "feature shard 0 of 2" in result.stderr and "feature shard 1 of 2" in result.stderr
    one, two = trained(tmp_path / "one"), trained(tmp_path / "two")
    configs = [{k: v for k, v in sae.config.to_dict().items() if k != "_name_or_path"} for sae in (one, two)]
    assert configs[0] == configs[1] and two.config.num_latents == 96
    assert_same_weights(one, two)
    assert not torch.equal(two.W_dec, SaeModel(two.config).W_dec)  # it trained
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text())[HOOKPOINT] for run in ("one", "two")]
    for key in ("train_dead_fraction", "train_never_fired_fraction"):
        assert metrics[1][key] == pytest.approx(metrics[0][key])


def test_a_two_by_two_mesh_trains_the_sae_of_one_process(tiny_run_inputs, tmp_path):  # noqa: F811
    """4 processes, 2 feature shards x 2 data groups: each group gathers its two blocks, the groups average their
    gradients, and the joined SAE is the one process's on the same 4 blocks a step."""
    flags = ("--batch_size", "124", "--train_tokens", "1240")
    train(tiny_run_inputs, tmp_path / "one", 1, 1, *flags)
    result = train(tiny_run_inputs, tmp_path / "mesh", 4, 2, *flags)
    for rank, (shard, group) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        assert f"Process {rank} is feature shard {shard} of 2 in data group {group} of 2" in result.stderr
    assert_same_weights(trained(tmp_path / "one"), trained(tmp_path / "mesh"))


def test_a_killed_shard_ends_the_run_with_an_error_naming_it(tiny_run_inputs, tmp_path):  # noqa: F811
    driver = tmp_path / "dying.py"
    driver.write_text(
        "import os, sys\n"
        "from hf_sae.sharded_training import FeatureShardedTrainer\n"
        "original = FeatureShardedTrainer.step\n"
        "def step(self, batches):\n"
        "    if self.state.step == 3 and self.shards.index == 1:\n"
        "        print('feature shard 1 dies now', file=sys.stderr, flush=True)\n"
        "        os._exit(3)\n"
        "    return original(self, batches)\n"
        "FeatureShardedTrainer.step = step\n"
        "from hf_sae.cli import main\n"
        "sys.exit(main(['train', *sys.argv[1:]]))\n"
    )
    flags = [*common_flags(tiny_run_inputs), "--shard_features", "2", "--ddp_timeout", "60"]
    command = [*local_launch(2), str(driver), *flags, "--output_dir", str(tmp_path / "run")]
    [result] = launch_all([command], timeout=200)
    assert ran(result.stderr, 2) == {0, 1} and "feature shard 1 of 2" in result.stderr
    assert "feature shard 1 dies now" in result.stderr  # the fault fired
    assert result.returncode != 0
    assert "exitcode  : 3" in result.stderr and "rank      : 1" in result.stderr  # torchrun names the rank
    assert not (tmp_path / "run" / HOOKPOINT).exists()


def assert_half_with_moments(weights: Path, whole: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """A shard's checkpoint holds `shapes` of the per-latent tensors, half of the whole model's, and Adam's two moments
    of every tensor it holds."""
    saved = torch.load(weights, weights_only=True)
    [model] = saved["saes"].values()
    assert {name: tuple(model[name].shape) for name in shapes} == shapes
    assert 2 * sum(model[name].numel() for name in shapes) == sum(whole.state_dict()[name].numel() for name in shapes)
    moments = [t for state in saved["optimizer"]["state"].values() for key, t in state.items() if key != "step"]
    assert sum(t.numel() for t in moments) == 2 * sum(t.numel() for t in model.values())  # exp_avg, exp_avg_sq


def test_shard_checkpoints_hold_half_the_sae_and_resume_exactly(tiny_run_inputs, tmp_path):  # noqa: F811
    """Each rank's checkpoint holds its 48 of the 96 latents' rows and their Adam moments (counted); a run resumed
    from step 10 ends as the uninterrupted run; resuming with another shard count is refused, naming both."""
    train(tiny_run_inputs, tmp_path / "full", 2, 2, "--save_steps", "10")
    checkpoint = tmp_path / "full" / "checkpoint-10"
    whole = trained(tmp_path / "full")
    for rank in (0, 1):
        shapes = {"W_enc": (48, 24), "b_enc": (48,), "W_dec": (48, 24)}
        assert_half_with_moments(checkpoint / f"weights_rank{rank}.pt", whole, shapes)
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / checkpoint.name)
    train(tiny_run_inputs, resumed, 2, 2, "--resume_from_checkpoint", "latest")
    for name, tensor in whole.state_dict().items():
        assert torch.equal(trained(resumed).state_dict()[name], tensor), name
    other = [sys.executable, "-m", "hf_sae.cli", "train", *common_flags(tiny_run_inputs), "--num_processes", "2",
             "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / checkpoint.name)]  # fmt: skip
    [refused] = launch_all([other])
    assert refused.returncode != 0
    assert "written with --shard_features 2; this run has --shard_features 1" in refused.stderr


# ---- bad input, refused before the LM loads ------------------------------------------------------------------------

REFUSALS = [
    ({"num_latents": 97}, ("--shard_features 2 needs a latent count that 2 divides; got --num_latents 97. Use "
                          "--num_latents 96 or 98")),
    ({"num_processes": 1}, "--shard_features 2 splits each SAE's latents over 2 processes, but this run has 1 "),
    ({"num_processes": 6, "shard_features": 4, "batch_size": 600},
     ("but this run has 6 process(es), which 4 must divide (each group of 4 shares one SAE; the groups are data "
     "parallel). Use --shard_features among [1, 2, 3, 6]")),
    ({"distribute_hookpoints": True}, "--shard_features 2 cannot be combined with --distribute_hookpoints"),
    ({"architecture": "matryoshka_batchtopk", "matryoshka_group_sizes": [32, 64]},
     "cannot train --architecture matryoshka_batchtopk: its nested prefixes decode groups of latents"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), REFUSALS)
def test_what_shard_features_cannot_serve_is_refused_before_the_lm_loads(tmp_path, monkeypatch, overrides, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    flat = {"shard_features": 2, "num_processes": 2, "num_latents": 96, **overrides}
    missing = str(tmp_path / "no_model_here")  # loading it would fail: the refusal must come first
    with pytest.raises(ArgumentError, match=re.escape(message)):
        train_saes(*group_arguments(TRAIN_GROUPS, model_name_or_path=missing, hookpoints=["model.layers.1"],
                                    output_dir=str(tmp_path / "run"), report_to="none", **flat))  # fmt: skip


ODD_COUNTS = [({"expansion_factor": 0.875}, "model.layers.1"),
              ({"sweep": "[{expansion_factor: 0.875, name: odd}]"}, "odd/model.layers.1")]  # fmt: skip


@pytest.fixture
def lm_never_loads(monkeypatch):
    import hf_sae.runners

    def load_lm(*args, **kwargs):
        raise AssertionError("the LM was loaded")

    monkeypatch.setattr(hf_sae.runners, "load_lm", load_lm)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def train_tiny_sharded(root: Path, out: Path, **flat):
    flat = {"shard_features": 2, "num_processes": 2, "model_name_or_path": str(root / "lm"), "k": 4,
            "context_size": 32, "hookpoints": ["model.layers.1"], **flat}  # fmt: skip
    return train_saes(*group_arguments(TRAIN_GROUPS, output_dir=str(out), report_to="none", **flat))


@pytest.mark.parametrize(("sae", "name"), ODD_COUNTS)
def test_a_latent_count_from_the_expansion_factor_is_checked_before_the_lm_loads(
    tiny_run_inputs,  # noqa: F811
    tmp_path,
    lm_never_loads,
    sae,
    name,
):
    """0.875 x the tiny LM's hidden size 24 (read from its config) is 21 latents, which 2 shards do not divide."""
    message = (f"--shard_features 2 needs a latent count that 2 divides; {name} (--expansion_factor 0.875 x d_in 24) "
               "has 21 latents. Use --num_latents 20 or 22")  # fmt: skip
    with pytest.raises(ArgumentError, match=re.escape(message)):
        train_tiny_sharded(tiny_run_inputs, tmp_path / "run", **sae)


def test_a_shard_too_large_for_memory_is_refused_before_the_lm_loads(tiny_run_inputs, tmp_path, lm_never_loads,  # noqa: F811
                                                                     monkeypatch):  # fmt: skip
    """16,384 latents of width 24 (from the LM's config) over 2 shards: 8,192 rows per process, 16 bytes per weight."""
    monkeypatch.setattr(hf_sae.memory, "memory_bytes", lambda device=None: 4 * 2**20)
    per_process = 16 * 2 * 8192 * 24
    message = (
        "--num_latents 16,384 (d_in 24, 1 SAE(s), each split over 2 feature shards: 8,192 latent rows per process) "
        f"needs about 0.0 GiB ({per_process:,} bytes) to train, more than the 0.0 GiB (4,194,304"
    )
    with pytest.raises(ArgumentError, match=re.escape(message)):
        train_tiny_sharded(tiny_run_inputs, tmp_path / "run", num_latents=16384)


def test_a_shard_count_below_one_is_refused(tmp_path):
    with pytest.raises(ArgumentError, match=re.escape("--shard_features must be a positive integer; got 0.")):
        group_arguments(TRAIN_GROUPS, shard_features=0, output_dir=str(tmp_path), report_to="none")
