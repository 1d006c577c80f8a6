"""The memory rule for SAEs: 16 bytes per weight to train, counted per process; with feature shards, a process holds
its rows of each SAE."""

import re

import pytest

import hf_sae.memory
from hf_sae import ArgumentError, SaeConfig, SaeModel
from hf_sae.arguments import TRAIN_GROUPS, SaeArguments, group_arguments
from hf_sae.arguments.train import check_latents_fit
from hf_sae.feature_shards import planned_shard
from hf_sae.memory import TRAINING_BYTES_PER_WEIGHT, check_fits_in_memory, sae_weights
from hf_sae.runners import _new_saes
from hf_sae.sweeps import sweep_runs

D_IN, LATENTS = 64, 8192
WHOLE_BYTES = 4 * 4 * 2 * LATENTS * D_IN  # fp32 weight, gradient, two Adam moments; encoder and decoder


@pytest.fixture
def twelve_mib(monkeypatch) -> int:
    """A machine with 12 MiB of memory: the whole SAE (16 MiB to train) does not fit, its half (8 MiB) does."""
    monkeypatch.setattr(hf_sae.memory, "memory_bytes", lambda device=None: 12 * 2**20)
    return 12 * 2**20


def new_saes(shards: int):
    runs = sweep_runs(SaeArguments(hookpoints=["site"], num_latents=LATENTS, architecture="topk", k=4), 1e-3)
    return _new_saes(runs, ["site"], {"site": None}, {"site": D_IN}, "lm", 0, "cpu", planned_shard(shards, 0))


def test_the_rule_counts_what_an_sae_allocates():
    model = SaeModel(SaeConfig(d_in=D_IN, num_latents=LATENTS, architecture="topk", k=4))
    biases = LATENTS + D_IN  # b_enc, b_dec: not counted by the rule
    assert sae_weights(LATENTS, D_IN) == sum(p.numel() for p in model.parameters()) - biases
    assert TRAINING_BYTES_PER_WEIGHT * sae_weights(LATENTS, D_IN) == WHOLE_BYTES
    assert sae_weights(LATENTS, D_IN, shards=2) == sae_weights(LATENTS, D_IN) // 2
    assert sae_weights(LATENTS + 1, D_IN, shards=2) == 2 * (LATENTS // 2 + 1) * D_IN  # the largest shard's rows


def test_a_width_refused_on_one_process_fits_split_over_two_shards(twelve_mib):
    with pytest.raises(ArgumentError) as refused:
        new_saes(shards=1)
    message = str(refused.value)
    assert f"--num_latents 8,192 (d_in 64, 1 SAE(s)) needs about 0.0 GiB ({WHOLE_BYTES:,} bytes) to train" in message
    assert f"more than the 0.0 GiB ({twelve_mib:,} bytes) of memory here" in message
    assert "(--shard_features)" in message
    saes, _ = new_saes(shards=2)
    assert saes["site"].config.num_latents == LATENTS and saes["site"].W_enc.shape == (LATENTS // 2, D_IN)


def test_a_shard_too_large_is_refused_naming_its_rows(monkeypatch):
    monkeypatch.setattr(hf_sae.memory, "memory_bytes", lambda device=None: 4 * 2**20)
    expected = (f"--num_latents 8,192 (d_in 64, 1 SAE(s), each split over 2 feature shards: 4,096 latent rows per "
                f"process) needs about 0.0 GiB ({WHOLE_BYTES // 2:,} bytes) to train, more than the 0.0 GiB "
                f"({4 * 2**20:,} bytes)")  # fmt: skip
    with pytest.raises(ArgumentError, match=re.escape(expected)):
        check_fits_in_memory(LATENTS, D_IN, shards=2)


def test_the_check_before_the_lm_loads_counts_each_process_rows(twelve_mib, tmp_path):
    """At width 1 (before the LM's config gives the widths), 2**20 latents need 32 MiB to train: refused on one
    process, refused over 2 shards naming the rows and bytes of each, accepted over 4 (8 MiB a process)."""
    latents = 2**20

    def check(shards: int) -> None:
        groups = group_arguments(TRAIN_GROUPS, num_latents=latents, hookpoints=["site"], shard_features=shards,
                                 num_processes=shards, output_dir=str(tmp_path), report_to="none")  # fmt: skip
        check_latents_fit(groups[0], groups[-1])

    whole = TRAINING_BYTES_PER_WEIGHT * 2 * latents
    with pytest.raises(ArgumentError, match=re.escape(f"--num_latents 1,048,576 (d_in 1, 1 SAE(s)) needs about "
                                                      f"0.0 GiB ({whole:,} bytes) to train")):  # fmt: skip
        check(1)
    expected = (f"--num_latents 1,048,576 (d_in 1, 1 SAE(s), each split over 2 feature shards: 524,288 latent rows "
                f"per process) needs about 0.0 GiB ({whole // 2:,} bytes) to train, more than the 0.0 GiB "
                f"({twelve_mib:,} bytes)")  # fmt: skip
    with pytest.raises(ArgumentError, match=re.escape(expected)):
        check(2)
    check(4)
