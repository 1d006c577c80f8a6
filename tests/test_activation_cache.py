import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm, save_tiny_llama_and_corpus
from tqdm import tqdm

import hf_sae.activation_cache as activation_cache
import hf_sae.runners as runners
from hf_sae import ArgumentError, DataError, SaeModel
from hf_sae.activation_cache import (
    CACHE_DATA,
    CACHE_META,
    ActivationCache,
    CacheReplay,
    harvest_records,
    replay_tokens,
    write_cache,
)
from hf_sae.arguments import TRAIN_GROUPS, group_arguments
from hf_sae.cli import main, parse_arguments
from hf_sae.hookpoints import capture_activations
from hf_sae.hub import load_saes
from hf_sae.runners import model_identity, train_saes

HOOKPOINTS = ["model.layers.0", "model.layers.2"]
SPECIAL = (0, 1, 2)  # pad, BOS, EOS of the tiny models


def lm_batches(count: int = 5, rows: int = 3, context: int = 16) -> list[tuple[torch.Tensor, list[str]]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for index in range(count):
        ids = torch.randint(3, 99, (rows, context), generator=generator)
        ids[:, 0] = 1  # BOS
        ids[0, 5] = 2  # an EOS inside the block: not counted
        batches.append((ids, [f"source{(index * rows + row) % 2}" for row in range(rows)]))
    return batches


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_written_cache_replays_the_captured_activations_with_their_provenance(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(activation_cache, "RECORD_BATCH_TOKENS", 100)  # several record batches to gather across
    lm, batches = make_tiny_lm("llama").model, lm_batches()
    records = harvest_records(lm, HOOKPOINTS, batches, exclude_token_ids=torch.tensor(SPECIAL), outlier_factor=None,
                              autocast_dtype=None)  # fmt: skip
    write_cache(records, tmp_path / "cache", max_tokens=10**6, dtype=dtype, metadata={"model": "tiny"})

    # The same activations captured directly, and where each came from, token by token.
    direct, provenance = {h: [] for h in HOOKPOINTS}, {"block": [], "position": [], "token_id": [], "source": []}
    for index, (ids, sources) in enumerate(batches):
        captured = capture_activations(lm, HOOKPOINTS, ids)
        for row in range(ids.shape[0]):
            for position in range(1, ids.shape[1]):
                if ids[row, position].item() in SPECIAL:
                    continue
                for h in HOOKPOINTS:
                    direct[h].append(captured[h][row, position])
                where = (index * 3 + row, position, ids[row, position].item(), sources[row])
                for key, value in zip(provenance, where):
                    provenance[key].append(value)

    cache = ActivationCache(tmp_path / "cache")
    tokens = len(provenance["block"])
    assert cache.tokens == tokens == 5 * 3 * 15 - 5 and cache.offsets.tolist() == [0, 132, 220]  # 2 record batches
    assert cache.provenance() == provenance
    assert cache.meta["hookpoints"] == {h: 24 for h in HOOKPOINTS} and cache.meta["model"] == "tiny"
    for h in HOOKPOINTS:
        expected = torch.stack(direct[h]).to(getattr(torch, dtype))
        assert torch.equal(cache.gather(h, torch.arange(tokens)), expected)
        rows = torch.randperm(tokens)
        assert torch.equal(cache.gather(h, rows), expected[rows])  # random access across record batches
        in_order = CacheReplay(cache, HOOKPOINTS, batch_size=9, shuffle=False)
        served = [batch[h] for batch, _ in zip(in_order, range(25))]
        assert torch.equal(torch.cat(served)[:tokens], expected)
    from datasets import Dataset

    dataset = Dataset.from_file(str(tmp_path / "cache" / CACHE_DATA))  # a `datasets` dataset as it is
    assert len(dataset) == tokens and set(dataset.column_names) == {*HOOKPOINTS, *provenance}


def test_a_cache_stops_at_its_token_budget(tmp_path):
    lm, batches = make_tiny_lm("llama").model, lm_batches()
    records = harvest_records(lm, HOOKPOINTS[:1], batches, exclude_token_ids=torch.tensor(SPECIAL),
                              outlier_factor=None, autocast_dtype=None)  # fmt: skip
    write_cache(records, tmp_path / "cache", max_tokens=50)
    cache = ActivationCache(tmp_path / "cache")
    assert cache.tokens == 50 and cache.meta["dtype"] == "bfloat16" and len(cache.provenance()["block"]) == 50
    with pytest.raises(ArgumentError, match="--cache_dtype must be one of"):
        write_cache(iter([]), tmp_path / "other", max_tokens=10, dtype="float32")
    assert not (tmp_path / "other").exists()


def write_index_cache(path, tokens: int, width: int = 4, metadata: dict | None = None,
                      hookpoint: str = "h") -> ActivationCache:  # fmt: skip
    """A cache whose row i holds the value i (exact in bf16 up to 256), written in LM-batch-sized records."""
    values = torch.zeros(tokens, width)
    values[:, 0] = torch.arange(tokens)
    records = [({hookpoint: values[i : i + 20]}, {"block": np.arange(i, min(i + 20, tokens))})
               for i in range(0, tokens, 20)]  # fmt: skip
    write_cache(records, path, max_tokens=tokens, metadata=metadata)
    return ActivationCache(path)


def served_rows(replays: list[CacheReplay], rounds: int) -> list[int]:
    iterators = [iter(replay) for replay in replays]
    return [int(v) for _ in range(rounds) for it in iterators for v in next(it)["h"][:, 0].tolist()]


def test_replay_serves_every_row_exactly_once_per_epoch_over_all_processes(tmp_path):
    tokens = 150
    cache = write_index_cache(tmp_path / "cache", tokens)
    one = served_rows([CacheReplay(cache, ["h"], 32, seed=3)], rounds=15)  # 3.2 epochs, batches across epochs
    epochs = [one[e * tokens : (e + 1) * tokens] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(tokens))
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(tokens))  # a fresh order every epoch
    next_seed = served_rows([CacheReplay(cache, ["h"], 30, seed=4)], rounds=10)
    assert next_seed[:tokens] not in epochs and next_seed[tokens:] not in epochs  # no order shared with seed 3's
    two = served_rows([CacheReplay(cache, ["h"], 16, seed=3, rank=r, world_size=2) for r in (0, 1)], rounds=15)
    assert two == one  # two processes split every batch of the same stream

    first = CacheReplay(cache, ["h"], 32, seed=3)
    iterator = iter(first)
    [next(iterator) for _ in range(6)]
    resumed = CacheReplay(cache, ["h"], 32, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(next(iter(resumed))["h"], next(iterator)["h"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama and corpus on disk, and a 3,000-token cache of `model.layers.1` written by `hf-sae cache`."""
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_llama_and_corpus(root, num_words=90, hidden_size=24, intermediate_size=37, num_layers=3, heads=4,
                               kv_heads=2, documents={"train": 300, "test": 40},
                               words_per_document=(20, 80))  # fmt: skip
    command = ["cache", "--model_name_or_path", str(root / "lm"), "--dataset_name", str(root / "text"),
               "--context_size", "32", "--hookpoints", "model.layers.1", "--cache_tokens", "3000",
               "--output_dir", str(root / "cache"), "--lm_dtype", "float32"]  # fmt: skip
    assert main(command) == 0
    return root


def tiny_args(root, output_dir, **overrides) -> tuple:
    flat = dict(model_name_or_path=str(root / "lm"), hookpoints=["model.layers.1"], k=4, expansion_factor=4,
                dataset_name=str(root / "text"), context_size=32, train_tokens=2048, batch_size=256,
                activation_cache=str(root / "cache"), output_dir=str(output_dir), report_to="none", eval_tokens=0,
                save_steps=0, lm_dtype="float32")  # fmt: skip
    return group_arguments(TRAIN_GROUPS, **{**flat, **overrides})


def forbid(monkeypatch, *targets) -> None:
    for module, name in targets:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} must not run"))


def test_hf_sae_cache_writes_the_run_settings_and_refuses_to_overwrite(tiny, monkeypatch):
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the error itself, not its one-line print
    meta = json.loads((tiny / "cache" / CACHE_META).read_text())
    assert meta["tokens"] == 3000 and meta["hookpoints"] == {"model.layers.1": 24}
    assert meta["model"] == model_identity(str(tiny / "lm")) == str((tiny / "lm").resolve())
    assert meta["data"]["context_size"] == 32 and meta["lm"]["lm_dtype"] == "float32"
    blocks = ActivationCache(tiny / "cache").provenance()["block"]
    assert blocks[:31] == [0] * 31 and blocks[31] == 1  # a block of 32 has 31 counted tokens (no EOS in it)
    with pytest.raises(ArgumentError, match="--output_dir must be a new folder, or pass --overwrite"):
        main(["cache", "--output_dir", str(tiny / "cache"), "--model_name_or_path", str(tiny / "lm")])


def test_the_cache_progress_bar_stops_at_the_cache_size():
    records = [({"h": torch.zeros(rows, 4)}, None) for rows in (4, 4, 4)]
    bar = tqdm(total=10, file=io.StringIO())
    assert len(list(runners._counting(records, bar))) == 3  # every record still goes to write_cache, which cuts it
    assert bar.n == 10


def test_training_replays_a_cache_for_several_epochs_without_the_lm(tiny, tmp_path, monkeypatch):
    import hf_sae.activations as activations

    forbid(monkeypatch, (activations, "run_lm"), (activation_cache, "run_lm"))
    report = train_saes(*tiny_args(tiny, tmp_path / "run", epochs=2))
    metrics = report["model.layers.1"]
    assert metrics["train_tokens"] == 5888 and metrics["train_epochs"] == pytest.approx(5888 / 3000, abs=1e-4)
    assert SaeModel.from_pretrained(tmp_path / "run" / "model.layers.1").config.num_latents == 96


def test_a_cache_that_does_not_match_the_run_is_refused_before_work_starts(tiny, tmp_path, monkeypatch):
    forbid(monkeypatch, (runners, "load_lm"))
    with pytest.raises(DataError, match=r"holds hookpoints \['model.layers.1'\], not \['model.layers.0'\]"):
        train_saes(*tiny_args(tiny, tmp_path / "a", hookpoints=["model.layers.0", "model.layers.1"]))
    shutil.copytree(tiny / "lm", tmp_path / "other_lm")
    with pytest.raises(DataError, match="holds activations of model .* but this run uses .*other_lm"):
        train_saes(*tiny_args(tiny, tmp_path / "b", model_name_or_path=str(tmp_path / "other_lm")))
    for epochs, message in ((0, "--epochs must be a number > 0"), (-1.5, "--epochs must be a number > 0"),
                            (0.01, "is less than one batch of 256")):  # fmt: skip
        with pytest.raises(ArgumentError, match=message):
            train_saes(*tiny_args(tiny, tmp_path / "c", epochs=epochs))
    with pytest.raises(ArgumentError, match="--epochs must be at least 1 without --activation_cache"):
        train_saes(*tiny_args(tiny, tmp_path / "d", epochs=0.5, activation_cache=None))
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_a_cache_of_another_width_is_refused_once_the_model_shows_its_width(tiny, tmp_path):
    identity = {"model": model_identity(str(tiny / "lm"))}
    cache = write_index_cache(tmp_path / "narrow", 600, width=7, metadata=identity, hookpoint="model.layers.1")
    assert cache.widths == {"model.layers.1": 7}
    with pytest.raises(DataError, match="has d_in 7 at 'model.layers.1'; the model's activation there has width 24"):
        train_saes(*tiny_args(tiny, tmp_path / "run", activation_cache=str(tmp_path / "narrow")))
    assert not (tmp_path / "run").exists()


SWEEP = [{"k": 2}, {"k": 4, "learning_rate": 3e-3, "name": "fast"}, {"num_latents": 48, "architecture": "relu"}]


def test_a_sweep_trains_every_configuration_from_one_cache_each_in_its_folder(tiny, tmp_path):
    report = train_saes(*tiny_args(tiny, tmp_path / "run", sweep=SWEEP, eval_tokens=1000))
    expected = {"k2": ("topk", 2, 96, 1e-3), "fast": ("topk", 4, 96, 3e-3), "relu-n48": ("relu", None, 48, 1e-3)}
    assert sorted(report) == sorted(f"{name}/model.layers.1" for name in expected)
    weights = []
    for name, (architecture, k, latents, rate) in expected.items():
        sae = SaeModel.from_pretrained(tmp_path / "run" / name / "model.layers.1")
        assert (sae.config.architecture, sae.config.k, sae.config.num_latents) == (architecture, k, latents)
        metrics = json.loads((tmp_path / "run" / name / "model.layers.1" / "metrics.json").read_text())
        assert metrics["learning_rate"] == rate and 0 < metrics["fvu"] < 1 and metrics["train_tokens"] == 2048
        assert list(load_saes(str(tmp_path / "run" / name))) == ["model.layers.1"]
        settings = json.loads((tmp_path / "run" / name / "training_args.json").read_text())
        assert (settings["k"], settings["learning_rate"], settings["sweep"]) == (k or 4, rate, None)
        assert settings["output_dir"] == str(tmp_path / "run" / name)
        weights.append(sae.W_dec.detach())
    assert not torch.equal(weights[0], weights[1])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == report
    assert json.loads((tmp_path / "run" / "training_args.json").read_text())["sweep"] == SWEEP  # the whole sweep


def test_a_sweep_from_the_live_lm_runs_the_lm_once_for_all_configurations(tiny, tmp_path, monkeypatch):
    import hf_sae.activations as activations

    forwards, real = [], activations.run_lm
    monkeypatch.setattr(activations, "run_lm", lambda *a, **k: forwards.append(1) or real(*a, **k))
    train_saes(*tiny_args(tiny, tmp_path / "one", activation_cache=None))
    single = len(forwards)
    train_saes(*tiny_args(tiny, tmp_path / "many", activation_cache=None, sweep=SWEEP))
    assert single > 0 and len(forwards) == 2 * single
    assert all((tmp_path / "many" / name / "model.layers.1" / "model.safetensors").is_file()
               for name in ("k2", "fast", "relu-n48"))  # fmt: skip


def test_bad_sweep_entries_are_refused_before_work_starts(tiny, tmp_path, monkeypatch):
    forbid(monkeypatch, (runners, "load_lm"))
    cases = [
        ([{"k": 2, "widht": 8}], r"entry 0 .* has unknown key\(s\) \['widht'\]; an entry may set \['name',"),
        ([{"k": "8"}], "`k` must be int; got '8'"),
        ([{"k": 0}], "entry 0 .*--k must be a positive integer for topk; got 0"),
        ([{"learning_rate": -1}], "`learning_rate` must be a number > 0"),
        ([{"k": 2}, {"k": 2}], r"several entries named \['k2'\]"),
        ([{"name": "a/b"}], "must be a folder name"),
        ("{k: 2}", "must be a list of configurations"),
    ]
    for sweep, message in cases:
        with pytest.raises(ArgumentError, match=message):
            train_saes(*tiny_args(tiny, tmp_path / "run", sweep=sweep))
    assert not (tmp_path / "run").exists()


def test_a_sweep_comes_from_a_yaml_config_a_file_or_an_inline_flag(tmp_path):
    (tmp_path / "config.yaml").write_text("sweep:\n  - {k: 16}\n  - {k: 64, learning_rate: 3.0e-4}\n")
    (sae_args, *_) = parse_arguments(TRAIN_GROUPS, [str(tmp_path / "config.yaml")], "hf-sae train")
    assert sae_args.sweep == [{"k": 16}, {"k": 64, "learning_rate": 3.0e-4}]
    from hf_sae.sweeps import sweep_runs

    (tmp_path / "sweep.yaml").write_text("- {k: 16}\n- {k: 64, learning_rate: 3.0e-4}\n")
    for flag in (str(tmp_path / "sweep.yaml"), "[{k: 16}, {k: 64, learning_rate: 3.0e-4}]"):
        (sae_args, *_) = parse_arguments(TRAIN_GROUPS, ["--sweep", flag], "hf-sae train")
        runs = sweep_runs(sae_args, 1e-3)
        expected = [("k16", 16, 1e-3), ("k64-lr0.0003", 64, 3e-4)]
        assert [(run.name, run.sae_args.k, run.learning_rate) for run in runs] == expected


def test_a_budget_of_many_epochs_of_a_small_cache_is_refused_before_work_unless_allowed(tiny, tmp_path, monkeypatch,
                                                                                       caplog):  # fmt: skip
    many = {"train_tokens": 32_768, "batch_size": 1024}  # 10.9 passes over the 3,000-token cache
    with monkeypatch.context() as patched:
        forbid(patched, (runners, "load_lm"))  # refused before the LM loads
        for sweep in (None, SWEEP):
            with pytest.raises(ArgumentError) as refused:
                train_saes(*tiny_args(tiny, tmp_path / "refused", sweep=sweep, **many))
            message = str(refused.value)
            assert message.startswith(f"--train_tokens 32,768 over the 3,000-token activation cache {tiny / 'cache'}")
            assert "is 10.92 epochs, more than 10" in message
            assert "Write a bigger cache (`hf-sae cache --cache_tokens 3277 --output_dir NEW_DIR`" in message
            assert message.endswith("or pass --allow_many_epochs to train for 10.92 epochs anyway.")
        assert not (tmp_path / "refused").exists()
    with caplog.at_level("INFO", logger="hf_sae"):
        report = train_saes(*tiny_args(tiny, tmp_path / "allowed", allow_many_epochs=True, **many))
    assert "Training for 10.9 epochs of the 3,000-token cache (32,768 tokens)." in caplog.messages
    assert report["model.layers.1"]["train_tokens"] == 32_768
    assert report["model.layers.1"]["train_epochs"] == pytest.approx(32_768 / 3000, abs=1e-4)
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_sae"):  # ten passes exactly: no flag needed
        train_saes(*tiny_args(tiny, tmp_path / "ten", train_tokens=30_000, batch_size=1000, epochs=None))
    assert "Training for 10 epochs of the 3,000-token cache (30,000 tokens)." in caplog.messages


def test_only_the_passes_that_train_tokens_imply_are_refused():
    cache = SimpleNamespace(tokens=1000, path="cache/small")  # all that the rule reads of a cache
    assert replay_tokens(cache, 10_000, None, 100) == 10_000  # ten passes exactly
    with pytest.raises(ArgumentError, match=r"--train_tokens 10,001 over .* cache/small is 10.00 epochs, more than"):
        replay_tokens(cache, 10_001, None, 100)
    assert replay_tokens(cache, 10_001, None, 100, allow_many_epochs=True) == 10_001
    assert replay_tokens(cache, 1, 25.0, 100) == 25_000  # --epochs 25 asks for them: not refused


def test_the_held_out_report_reads_a_tenth_of_the_training_budget_unless_told(tiny, tmp_path, caplog):
    reports, settings = {}, {}
    for name, given in (("auto", None), ("given", 1000)):
        caplog.clear()
        with caplog.at_level("INFO", logger="hf_sae"):
            reports[name] = train_saes(*tiny_args(tiny, tmp_path / name, eval_tokens=given))["model.layers.1"]
        settings[name] = json.loads((tmp_path / name / "training_args.json").read_text())["eval_tokens"]
        said = [message for message in caplog.messages if "held-out tokens" in message]
        expected = "Evaluating on 205 held-out tokens (10% of the training budget, capped at 100k); --eval_tokens"
        expected += " sets it."
        assert said == ([expected] if given is None else [])  # a number given is not second-guessed
    assert settings == {"auto": 205, "given": 1000}  # a tenth of --train_tokens 2048, as the run records it
    for name, budget in settings.items():  # whole blocks of 32: 31 counted tokens each, less an EOS here and there
        blocks = math.ceil(budget / 32)
        assert (blocks - 1) * 31 < reports[name]["eval_tokens"] <= blocks * 31


# ---- a cache is checked against its header; one writer per folder --------------------------------------------------


def relabel(folder, **values) -> None:
    meta = json.loads((folder / CACHE_META).read_text())
    (folder / CACHE_META).write_text(json.dumps(meta | values))


def alter_values(folder) -> None:
    """Row 10's value 10 becomes 99 in the Arrow file itself (`write_index_cache`: row i holds i, then zeros)."""
    rows = torch.tensor([[10.0] + [0.0] * 23, [11.0] + [0.0] * 23], dtype=torch.bfloat16).view(torch.int16)
    data = (folder / CACHE_DATA).read_bytes()
    at = data.index(rows.numpy().tobytes())
    changed = torch.tensor([99.0], dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
    (folder / CACHE_DATA).write_bytes(data[:at] + changed + data[at + 2 :])


def truncate_data(folder) -> None:
    data = (folder / CACHE_DATA).read_bytes()
    (folder / CACHE_DATA).write_bytes(data[: len(data) // 2])


OTHER_MODEL = "another/model"  # the model a cache was written from, where it is not the run's


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f, run: relabel(f, dtype="float16"),
         r"cache.json says dtype 'float16', but activations.arrow was written with 'bfloat16' \(was cache.json"),
        (lambda f, run: relabel(f, model=run), rf"says model '.*lm', but .* was written with '{OTHER_MODEL}'"),
        (lambda f, run: alter_values(f), r"record batch 0 \(rows 0 to 299\) does not match its checksum: its values"),
        (lambda f, run: relabel(f, tokens=599), r"cache.json says 599 tokens, activations.arrow holds 600"),
        (lambda f, run: relabel(f, checksums=None), r"cache.json has no record batch checksums for 2 record batches"),
        (lambda f, run: truncate_data(f), r"activations.arrow cannot be read \(.*\)\. Nothing was trained on it"),
        (lambda f, run: (f / CACHE_META).write_text("{"), r"cache.json is not valid JSON"),
    ],
    ids=["dtype relabelled", "another model relabelled", "values altered", "token count", "no checksums",
         "truncated", "cache.json damaged"],
)  # fmt: skip
def test_a_cache_that_disagrees_with_its_header_is_refused_before_training(tiny, tmp_path, monkeypatch, damage,
                                                                           message):  # fmt: skip
    from hf_sae.errors import FileFormatError

    monkeypatch.setattr(activation_cache, "RECORD_BATCH_TOKENS", 300)  # two record batches
    run_model = model_identity(str(tiny / "lm"))
    written_model = OTHER_MODEL if OTHER_MODEL in message else run_model
    folder = tmp_path / "cache"
    write_index_cache(folder, 600, width=24, metadata={"model": written_model}, hookpoint="model.layers.1")
    ActivationCache(folder).check_run(written_model, ["model.layers.1"], {"model.layers.1": 24})  # intact, it opens
    before = (folder / CACHE_META).read_bytes(), (folder / CACHE_DATA).read_bytes()
    damage(folder, run_model)
    assert ((folder / CACHE_META).read_bytes(), (folder / CACHE_DATA).read_bytes()) != before  # the damage is real
    forbid(monkeypatch, (runners, "load_lm"))  # refused before the LM loads, long before training
    with pytest.raises(FileFormatError if "JSON" in message else DataError, match=message):
        train_saes(*tiny_args(tiny, tmp_path / "run", activation_cache=str(folder)))
    assert not (tmp_path / "run").exists()


WRITER = """
import sys, time
from pathlib import Path
import numpy as np, torch
from hf_sae.activation_cache import write_cache

folder, gate, value = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

def records():  # the first writer holds the folder until the test opens the gate
    (gate / f"writing-{value:g}").touch()
    while value == 1 and not (gate / "go").exists():
        time.sleep(0.02)
    yield {"h": torch.full((8, 4), value)}, {"block": np.arange(8)}

write_cache(records(), folder, max_tokens=8)
print(f"wrote {value:g}")
"""


def test_two_processes_writing_one_cache_cannot_replace_each_other(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_SAE_DEBUG": "1"}
    write = [sys.executable, "-c", WRITER, str(tmp_path / "cache"), str(tmp_path)]
    first = subprocess.Popen([*write, "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the first writer waits for a gate: never leave it waiting if an assertion fails
        deadline = time.monotonic() + 120
        while not (tmp_path / "writing-1").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.02)
        second = subprocess.run([*write, "2"], env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None and not (tmp_path / "cache").exists()  # both ran at once: the first still writing
        assert second.returncode == 1 and not (tmp_path / "writing-2").exists()  # refused before harvesting a row
        assert f"is being written by another process (pid {first.pid} on" in second.stderr
        (tmp_path / "go").touch()
        assert first.wait(timeout=120) == 0 and "wrote 1" in first.stdout.read()
    finally:
        first.kill()
    cache = ActivationCache(tmp_path / "cache")
    assert torch.equal(cache.gather("h", torch.arange(8)), torch.ones(8, 4, dtype=torch.bfloat16))  # the first's
    assert not list(tmp_path.glob(".cache*"))  # no claim or staging folder left behind


def test_without_a_budget_an_sae_run_is_the_default_run_and_a_transcoder_reads_fresh_text(caplog):
    from hf_sae.arguments import SaeTrainingArguments
    from hf_sae.arguments.train import DEFAULT_RUN_EPOCHS, DEFAULT_RUN_TOKENS, DEFAULT_TRAIN_TOKENS
    from hf_sae.budgets import default_run

    unset = SaeTrainingArguments(report_to="none")
    assert unset.train_tokens is None and unset.epochs is None and unset.learning_rate is None
    with caplog.at_level("INFO", logger="hf_sae"):
        sae = default_run(unset, transcoder=False)
    assert (sae.train_tokens, sae.epochs, sae.learning_rate) == (DEFAULT_RUN_TOKENS, DEFAULT_RUN_EPOCHS, 2e-3)
    assert (DEFAULT_RUN_TOKENS, DEFAULT_RUN_EPOCHS) == (700_000, 6)
    assert "read once and trained on for 6 epochs (4,200,000 tokens) at lr 0.002" in caplog.text
    transcoder = default_run(unset, transcoder=True)
    assert (transcoder.train_tokens, transcoder.epochs, transcoder.learning_rate) == (DEFAULT_TRAIN_TOKENS, None, 1e-3)
    cached = default_run(dataclasses.replace(unset, activation_cache="somewhere"), transcoder=False)
    assert (cached.train_tokens, cached.epochs, cached.learning_rate) == (DEFAULT_TRAIN_TOKENS, None, 1e-3)
    budget = default_run(dataclasses.replace(unset, train_tokens=4096), transcoder=False)
    assert (budget.train_tokens, budget.epochs, budget.learning_rate) == (4096, None, 1e-3)  # a budget given is kept
    given = dataclasses.replace(unset, train_tokens=4096, learning_rate=5e-4)
    assert default_run(given, transcoder=False) is given
    chosen = default_run(dataclasses.replace(unset, learning_rate=5e-4), transcoder=False)
    assert (chosen.train_tokens, chosen.learning_rate) == (DEFAULT_RUN_TOKENS, 5e-4)  # a rate given is the rate


def test_epochs_without_a_cache_read_the_text_once_and_a_second_run_replays_it(tiny, tmp_path, monkeypatch, caplog):
    import hf_sae.activations as activations

    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path / "home"))
    own = dict(activation_cache=None, epochs=3, train_tokens=1024, eval_tokens=None)
    with caplog.at_level("INFO", logger="hf_sae"):
        first = train_saes(*tiny_args(tiny, tmp_path / "first", **own))["model.layers.1"]
    folders = list((tmp_path / "home" / "activations").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("lm-1024-")  # the model, the tokens, the text's hash
    written = ActivationCache(folders[0])
    assert written.tokens == 1024 and written.meta["data"]["dataset_name"] == str(tiny / "text")
    assert first["train_tokens"] == 3072 and first["train_epochs"] == pytest.approx(3.0)
    assert "caches its activations at" in caplog.text
    # The held-out budget follows the tokens trained (3 x 1,024), not the text read, before and after the cache exists.
    assert first["eval_tokens"] <= 307 and "Evaluating on 307 held-out tokens" in caplog.text
    caplog.clear()
    forbid(monkeypatch, (activations, "run_lm"), (activation_cache, "run_lm"))  # the second run reads no text
    with caplog.at_level("INFO", logger="hf_sae"):
        second = train_saes(*tiny_args(tiny, tmp_path / "second", **own))["model.layers.1"]
    assert "replays the activations at" in caplog.text and "Evaluating on 307 held-out tokens" in caplog.text
    assert second["train_tokens"] == 3072 and list((tmp_path / "home" / "activations").iterdir()) == folders
    weights = [SaeModel.from_pretrained(tmp_path / run / "model.layers.1").W_dec for run in ("first", "second")]
    assert torch.equal(*weights)  # the same activations in the same orders: the same SAE
