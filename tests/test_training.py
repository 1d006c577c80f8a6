import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_llama_and_corpus

from hf_sae import ArgumentError, DataError, HookpointError, SaeConfigError, SaeModel, TrainingError
from hf_sae.arguments import (
    TRAIN_GROUPS,
    DataArguments,
    LanguageModelArguments,
    SaeArguments,
    SaeTrainingArguments,
    group_arguments,
)
from hf_sae.arguments.train import DEFAULT_LEARNING_RATE
from hf_sae.offline.builtin_models import DEFAULT_MODEL
from hf_sae.runners import train_saes
from hf_sae.schedules import Schedule
from hf_sae.training import SaeTrainer, geometric_median

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory) -> Path:
    """A tiny Llama with a word-level tokenizer saved to disk, and a jsonl corpus with a held-out split."""
    root = tmp_path_factory.mktemp("tiny")
    words = save_tiny_llama_and_corpus(
        root,
        num_words=90,
        hidden_size=24,
        intermediate_size=37,
        num_layers=3,
        heads=4,
        kv_heads=2,
        documents={"train": 300, "test": 40},
        words_per_document=(20, 80),
    )
    rng = random.Random(0)
    # One long document: every block then keeps exactly context_size - 1 tokens (only position 0 is dropped).
    with open(root / "one_document.jsonl", "w") as handle:
        handle.write(json.dumps({"text": " ".join(rng.choices(words, k=6000))}) + "\n")
    return root


def run_args(root: Path, output_dir: Path, **overrides) -> tuple:
    """The four argument groups of `train_saes`, for a short run on the tiny model."""
    flat = dict(model_name_or_path=str(root / "lm"), hookpoints=["model.layers.1"], k=4, expansion_factor=4,
                dataset_name=str(root / "text"), context_size=32, train_tokens=8192, batch_size=256,
                shuffle_buffer_tokens=2048, output_dir=str(output_dir), report_to="none", eval_tokens=2000,
                save_steps=0, lm_dtype="float32")  # fmt: skip
    return group_arguments(TRAIN_GROUPS, **{**flat, **overrides})


def test_default_arguments_describe_the_offline_default_run():
    sae, lm = SaeArguments(), LanguageModelArguments()
    assert lm.model_name_or_path is None and DEFAULT_MODEL == "smollm2-135m-instruct"  # None: the built-in model
    assert (sae.hookpoints, sae.architecture, sae.k, sae.expansion_factor) == (["model.layers.15"], "topk", 32, 16)
    assert SaeTrainingArguments().report_to == "tensorboard"
    assert DataArguments().dataset_name is None  # the built-in corpus


def test_a_run_saves_sae_and_metrics_that_load_back(tiny_run_inputs, tmp_path):
    args = run_args(tiny_run_inputs, tmp_path / "run", hookpoints=["model.layers.0", "model.layers.1"])
    report = train_saes(*args)
    for hookpoint in ("model.layers.0", "model.layers.1"):
        sae = SaeModel.from_pretrained(tmp_path / "run" / hookpoint)
        assert sae.config.hookpoint == hookpoint
        assert sae.config.base_model_name_or_path == str(tiny_run_inputs / "lm")
        assert (sae.config.d_in, sae.config.num_latents, sae.config.k) == (24, 96, 4)
        torch.testing.assert_close(sae.W_dec.norm(dim=-1) * 0 + 1, torch.ones(96))  # sanity on shape
        metrics = report[hookpoint]
        assert metrics["train_tokens"] == 8192
        assert 0 < metrics["fvu"] < 1.0
        assert metrics["l0"] == pytest.approx(4.0, abs=0.01)
        assert 0 <= metrics["dead_fraction"] <= 1 and 0 <= metrics["train_dead_fraction"] <= 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == report
    assert any((tmp_path / "run").rglob("events.out.tfevents*")) is False  # report_to none writes no logs


def test_held_out_fvu_matches_a_direct_computation_and_training_lowers_it(tiny_run_inputs, tmp_path):
    from hf_sae.hookpoints import capture_activations
    from hf_sae.models import load_model

    args = run_args(tiny_run_inputs, tmp_path / "run", train_tokens=16384, eval_tokens=500_000)
    report = train_saes(*args)["model.layers.1"]
    sae = SaeModel.from_pretrained(tmp_path / "run" / "model.layers.1")
    lm, tokenizer = load_model(str(tiny_run_inputs / "lm"))
    texts = [json.loads(line)["text"] for line in (tiny_run_inputs / "text" / "test.jsonl").read_text().splitlines()]
    ids = [i for text in texts for i in tokenizer(text)["input_ids"] + [2]]
    blocks = torch.tensor([[1] + ids[i : i + 31] for i in range(0, len(ids) - 30, 31)])
    with torch.no_grad():
        x = capture_activations(lm, ["model.layers.1"], blocks)["model.layers.1"][:, 1:]
        x = x[blocks[:, 1:] != 2]  # EOS is a special token: dropped
        norms = x.norm(dim=-1)
        x = x[norms <= 10 * norms.median()]  # (approximately) the outlier rule, per LM batch in the library
        fvu = (sae(x).reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert report["eval_tokens"] == pytest.approx(x.shape[0], rel=0.02)
    assert report["fvu"] == pytest.approx(fvu.item(), rel=0.05)
    untrained = SaeModel(sae.config)
    with torch.no_grad():
        untrained_fvu = (untrained(x).reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert untrained_fvu.item() > fvu.item() + 0.1


def test_resuming_continues_the_data_stream_exactly(tiny_run_inputs, tmp_path, monkeypatch):
    seen: list[list[float]] = []
    original_step = SaeTrainer.step

    def recording_step(self, micro_batches):
        seen.append(micro_batches[0]["model.layers.1"].sum(-1).tolist())
        return original_step(self, micro_batches)

    monkeypatch.setattr(SaeTrainer, "step", recording_step)
    args = run_args(tiny_run_inputs, tmp_path / "straight", save_steps=0)
    train_saes(*args)
    straight, straight_batches = SaeModel.from_pretrained(tmp_path / "straight" / "model.layers.1"), list(seen)
    seen.clear()

    def crashing_step(self, micro_batches):
        if self.state.step == 13:
            raise KeyboardInterrupt  # the process dies after checkpoint-10, in the middle of the run
        return recording_step(self, micro_batches)

    monkeypatch.setattr(SaeTrainer, "step", crashing_step)
    args = run_args(tiny_run_inputs, tmp_path / "resumed", save_steps=5, save_total_limit=5)
    with pytest.raises(KeyboardInterrupt):
        train_saes(*args)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    before_crash = list(seen[:10])
    seen.clear()
    monkeypatch.setattr(SaeTrainer, "step", recording_step)
    args = run_args(tiny_run_inputs, tmp_path / "resumed", save_steps=5, resume_from_checkpoint="latest")
    train_saes(*args)
    assert before_crash + seen == straight_batches  # no batch seen twice, none skipped, same order
    resumed = SaeModel.from_pretrained(tmp_path / "resumed" / "model.layers.1")
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_intact(tiny_run_inputs, tmp_path, monkeypatch):
    args = run_args(tiny_run_inputs, tmp_path / "run", save_steps=5, save_total_limit=5)
    original_save = SaeTrainer.save_checkpoint

    def dying_save(self):
        if self.state.step == 10:
            (self.output_dir / "checkpoint-10.tmp").mkdir()
            raise OSError("disk full")
        return original_save(self)

    monkeypatch.setattr(SaeTrainer, "save_checkpoint", dying_save)
    with pytest.raises(OSError, match="disk full"):
        train_saes(*args)
    monkeypatch.setattr(SaeTrainer, "save_checkpoint", original_save)
    args = run_args(tiny_run_inputs, tmp_path / "run", save_steps=5, resume_from_checkpoint="latest")
    train_saes(*args)  # resumes from checkpoint-5, ignoring the half-written checkpoint-10.tmp
    assert (tmp_path / "run" / "model.layers.1" / "model.safetensors").exists()


def test_nan_activations_stop_training_naming_step_and_hookpoint(tiny_run_inputs, tmp_path, monkeypatch):
    args = run_args(tiny_run_inputs, tmp_path / "run", save_steps=4)
    original_step = SaeTrainer.step

    def poisoned(self, micro_batches):
        if self.state.step == 6:
            micro_batches = [{h: torch.full_like(x, float("nan")) for h, x in b.items()} for b in micro_batches]
        return original_step(self, micro_batches)

    monkeypatch.setattr(SaeTrainer, "step", poisoned)
    with pytest.raises(TrainingError, match=r"Non-finite activations at step 6 for hookpoint 'model.layers.1'.* the "
                       r"newest intact one is \S+checkpoint-4: resume from it"):  # fmt: skip
        train_saes(*args)
    kept = tmp_path / "run" / "checkpoint-4"
    assert (kept / "trainer_state.pt").exists()
    assert not (tmp_path / "run" / "model.layers.1").exists()  # no SAE from a broken run


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (dict(model_name_or_path="./no/such/model"), OSError, r"no/such/model"),
        (dict(dataset_name="./no/such/file.jsonl"), DataError, r"does not exist"),
        (dict(text_column="body"), DataError, r"text"),
        (dict(hookpoints=["model.layers.9"]), HookpointError, r"model.layers.9.*closest"),
        (dict(context_size=100), DataError, r"context_size <= 64"),
        (dict(k=96), SaeConfigError, r"`k` must be smaller than `num_latents` \(96\); got k=96"),
        (
            dict(architecture="matryoshka_batchtopk", matryoshka_group_sizes=[24, 48]),
            SaeConfigError,
            r"`matryoshka_group_sizes` \[24, 48\] sum to 72, .* num_latents=96\. Change the sizes to sum to 96",
        ),  # fmt: skip
        (
            dict(architecture="matryoshka_batchtopk", matryoshka_group_sizes=[24, 48], num_latents=80),
            ArgumentError,
            r"--matryoshka_group_sizes must be sizes summing to --num_latents 80 \(they sum to 72\); got \[24, 48\]",
        ),  # fmt: skip
        (dict(architecture="matryoshka_batchtopk", matryoshka_group_sizes=[0, 96]), ArgumentError, r"positive"),
        (dict(matryoshka_group_sizes=[24, 72]), ArgumentError, r"applies only to matryoshka_batchtopk"),
        (dict(batch_size=255, train_tokens=1000), None, None),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_error(tiny_run_inputs, tmp_path, overrides, error, message,
                                                             monkeypatch):  # fmt: skip
    monkeypatch.setattr(SaeTrainer, "train", lambda self: pytest.fail("training must not start"))
    if error is None:
        with pytest.raises(pytest.fail.Exception, match="training must not start"):
            train_saes(*run_args(tiny_run_inputs, tmp_path / "run", **overrides))  # a valid one reaches the trainer
        return
    with pytest.raises(error, match=message):  # refused as the arguments are built, or before training
        train_saes(*run_args(tiny_run_inputs, tmp_path / "run", **overrides))


def test_matryoshka_trains_from_the_command_line_and_loads_and_evaluates(tiny_run_inputs, tmp_path):
    from hf_sae.cli import main

    root, out = tiny_run_inputs, tmp_path / "run"
    flags = dict(model_name_or_path=root / "lm", hookpoints="model.layers.1", architecture="matryoshka_batchtopk",
                 k=4, num_latents=96, dataset_name=root / "text", context_size=32, train_tokens=8192, batch_size=256,
                 shuffle_buffer_tokens=2048, output_dir=out, report_to="none", eval_tokens=2000, save_steps=0,
                 lm_dtype="float32")  # fmt: skip
    argv = [part for name, value in flags.items() for part in (f"--{name}", str(value))]
    assert main(["train", *argv, "--matryoshka_group_sizes", "24", "72"]) == 0
    sae = SaeModel.from_pretrained(out / "model.layers.1")
    assert (sae.config.architecture, sae.config.matryoshka_group_sizes) == ("matryoshka_batchtopk", [24, 72])
    assert sae.threshold.item() > 0  # learned in training, used at inference
    report = json.loads((out / "metrics.json").read_text())["model.layers.1"]
    assert report["architecture"] == "matryoshka_batchtopk"
    assert 0 < report["fvu"] < 1 and report["l0"] == pytest.approx(4, rel=0.5)  # held out, through the threshold


def test_an_output_directory_holding_another_run_is_refused(tiny_run_inputs, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    args = run_args(tiny_run_inputs, tmp_path / "run")
    with pytest.raises(TrainingError, match=r"already holds a run .*--overwrite_output_dir"):
        train_saes(*args)
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"
    args = run_args(tiny_run_inputs, tmp_path / "run", overwrite_output_dir=True, eval_tokens=0)
    train_saes(*args)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model.layers.1"]["train_tokens"] == 8192


def test_schedules_fit_any_run_length():
    args = SaeTrainingArguments(train_tokens=4096 * 10, batch_size=4096)
    lrs = [Schedule(args).lr_lambda(step) for step in range(10)]
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(0.5)  # a 10-step run: warm-up of 1 step, decay over 2
    long = Schedule(SaeTrainingArguments(train_tokens=4096 * 1000, batch_size=4096))
    assert long.lr_lambda(0) == pytest.approx(1 / 20) and long.lr_lambda(500) == 1.0
    assert long.lr_lambda(999) == pytest.approx(1 / 200)
    assert long.sparsity_scale(0) == pytest.approx(1 / 50) and long.sparsity_scale(60) == 1.0
    assert long.dead_window == 1_024_000  # a quarter of the run, so "dead" means something on short runs


def test_geometric_median_resists_outliers():
    points = torch.cat([torch.randn(200, 3) * 0.1 + torch.tensor([1.0, 2.0, 3.0]), torch.full((20, 3), 1000.0)])
    torch.testing.assert_close(geometric_median(points), torch.tensor([1.0, 2.0, 3.0]), atol=0.05, rtol=0)
    assert (points.mean(0) - torch.tensor([1.0, 2.0, 3.0])).norm() > 50


def test_an_activation_cache_is_written_once_and_replayed(tiny_run_inputs, tmp_path, monkeypatch):
    cache = tmp_path / "acts"
    args = run_args(tiny_run_inputs, tmp_path / "first", activation_cache=str(cache), eval_tokens=0)
    train_saes(*args)
    from hf_sae.activation_cache import ActivationCache

    stored = ActivationCache(cache)
    assert list(stored.widths) == ["model.layers.1"] and stored.tokens == 8192  # train_tokens, position 0 etc. dropped
    import hf_sae.activation_cache as activation_cache
    import hf_sae.activations as activations

    for module in (activations, activation_cache):
        monkeypatch.setattr(module, "run_lm", lambda *a, **k: pytest.fail("the LM must not run"))
    args = run_args(tiny_run_inputs, tmp_path / "second", activation_cache=str(cache), eval_tokens=0,
                          architecture="batchtopk")  # fmt: skip
    report = train_saes(*args)  # a second SAE from the same activations, without the LM
    assert report["model.layers.1"]["architecture"] == "batchtopk"


def test_several_configurations_on_one_hookpoint_train_from_one_stream(tiny_run_inputs):
    from hf_sae import SaeConfig
    from hf_sae.activations import ShufflingBuffer

    torch.manual_seed(0)
    stream = [{"model.layers.1": torch.randn(64, 24) * 3 + 1} for _ in range(40)]
    saes = {name: SaeModel(SaeConfig(d_in=24, num_latents=96, architecture=arch, k=k, hookpoint="model.layers.1"))
            for name, arch, k in (("topk", "topk", 4), ("relu", "relu", None))}  # fmt: skip
    buffer = ShufflingBuffer(lambda skip: iter(stream[skip:]), batch_size=128, capacity=0)
    args = SaeTrainingArguments(train_tokens=128 * 20, batch_size=128, report_to="none", output_dir="unused")
    before = {name: sae.W_enc.detach().clone() for name, sae in saes.items()}
    SaeTrainer(args, saes, buffer).train()
    for name, sae in saes.items():
        assert not torch.equal(sae.W_enc, before[name]), name  # both trained on every batch
    assert not torch.equal(saes["topk"].W_enc, saes["relu"].W_enc)


def test_a_saved_training_args_json_reproduces_the_run(tiny_run_inputs, tmp_path):
    from hf_sae.cli import main

    args = run_args(tiny_run_inputs, tmp_path / "first", eval_tokens=0, outlier_factor=None, dead_after_tokens=500)
    train_saes(*args)
    saved = json.loads((tmp_path / "first" / "training_args.json").read_text())
    assert saved["dataset_name"] == str(tiny_run_inputs / "text") and saved["outlier_factor"] is None  # all groups
    assert (
        main(["train", str(tmp_path / "first" / "training_args.json"), "--output_dir", str(tmp_path / "again")]) == 0
    )
    first = SaeModel.from_pretrained(tmp_path / "first" / "model.layers.1")
    again = SaeModel.from_pretrained(tmp_path / "again" / "model.layers.1")
    for name, tensor in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    again_args = json.loads((tmp_path / "again" / "training_args.json").read_text())
    assert again_args == {**saved, "output_dir": str(tmp_path / "again")}


def test_a_typo_in_a_choice_fails_before_the_lm_loads(tmp_path, monkeypatch):
    from hf_sae import ArgumentError
    from hf_sae.cli import main

    monkeypatch.setattr("hf_sae.runners.load_lm", lambda *a, **k: pytest.fail("the LM must not load"))
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the error itself, not its one-line print
    config = tmp_path / "run.yaml"
    config.write_text("architecture: topkk\nk: null\n")
    with pytest.raises(ArgumentError, match=r"--architecture must be one of \['relu', 'topk'"):
        main(["train", str(config)])
    with pytest.raises(ArgumentError, match=r"argument --architecture: invalid choice: 'topkk' \(choose from"):
        main(["train", "--architecture", "topkk"])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoints_hold_no_pickled_code_and_a_planted_payload_is_refused(tiny_run_inputs, tmp_path, monkeypatch):
    args = run_args(tiny_run_inputs, tmp_path / "run", save_steps=10, save_total_limit=5, eval_tokens=0)
    train_saes(*args)
    checkpoint = tmp_path / "run" / "checkpoint-30"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["buffer_rank0.pt", "trainer_state.pt", "weights_rank0.pt"]
    for path in checkpoint.iterdir():
        torch.load(path, weights_only=True)  # tensors and plain values only
    monkeypatch.chdir(tmp_path)
    torch.save({"step": _RunsCode()}, checkpoint / "trainer_state.pt")
    args = run_args(tiny_run_inputs, tmp_path / "run", resume_from_checkpoint=str(checkpoint), eval_tokens=0)
    with pytest.raises(TrainingError, match=r"trainer_state.pt cannot be loaded .* refused rather than run.*"
                       r"checkpoint-10', 'checkpoint-20'"):  # fmt: skip
        train_saes(*args)
    assert not (tmp_path / "pwned").exists()  # the payload never ran


def test_resuming_with_another_number_of_processes_is_refused(tiny_run_inputs, tmp_path):
    args = run_args(tiny_run_inputs, tmp_path / "run", save_steps=10, eval_tokens=0)
    train_saes(*args)
    state_file = tmp_path / "run" / "checkpoint-30" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "world_size": 2}, state_file)
    args = run_args(tiny_run_inputs, tmp_path / "run", resume_from_checkpoint="latest", eval_tokens=0)
    with pytest.raises(TrainingError, match=r"written by a run on 2 process\(es\); this one has 1"):
        train_saes(*args)


def test_tensorboard_gets_the_loss_terms_the_held_out_report_and_clean_hparams(tiny_run_inputs, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    capacities = []
    original_step = SaeTrainer.step

    def step(self, micro_batches):
        capacities.append(self.buffer.capacity)
        return original_step(self, micro_batches)

    monkeypatch.setattr(SaeTrainer, "step", step)
    args = run_args(tiny_run_inputs, tmp_path / "run", report_to="tensorboard", logging_steps=4,
                    shuffle_buffer_tokens=65536, architecture="relu", k=None)  # fmt: skip
    report = train_saes(*args)
    assert set(capacities) == {8192}  # the buffer holds at most the run's 8,192 tokens, not 65,536
    events = EventAccumulator(str(next((tmp_path / "run").rglob("events.out.tfevents*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for term in ("loss", "mse_loss", "sparsity_loss", "fvu", "explained_variance", "l0", "dead_fraction", "grad_norm"):
        assert term in tags, term  # unprefixed: every configuration's run has the same tags
    assert {"lr", "tokens_per_second", "heldout_fvu"} <= tags
    training = args[-1]  # each step logs the rate it trained at: the last one's is not yet 0
    logged = [(event.step, event.value) for event in events.Scalars("lr")]
    assert logged[-1][0] == Schedule(training).num_steps and logged[-1][1] > 0
    for step, value in logged:
        assert value == pytest.approx(DEFAULT_LEARNING_RATE * Schedule(training).lr_lambda(step - 1))
    assert events.Scalars("heldout_fvu")[-1].value == pytest.approx(report["model.layers.1"]["fvu"])
    histogram = events.Histograms("heldout_log10_firing_frequency")[-1].histogram_value
    metrics = report["model.layers.1"]
    assert (
        histogram.num == round(metrics["num_latents"] * (1 - metrics["dead_fraction"])) > 0
    )  # the latents that fired
    assert -math.log10(metrics["eval_tokens"]) - 1e-6 <= histogram.min <= histogram.max <= 0  # log10 frequencies
    mse = {e.step: e.value for e in events.Scalars("mse_loss")}
    assert sorted(mse) == [4, 8, 12, 16, 20, 24, 28, 32]  # logging steps only
    hparams = (tmp_path / "run").rglob("events.out.tfevents*")
    assert all(b"null" not in path.read_bytes() for path in hparams)  # unset arguments are left out, not 'null'


def test_the_fp16_loss_scale_is_checkpointed_and_resumed(tmp_path):
    """accelerate makes a GradScaler only for fp16 on an accelerator; a CPU GradScaler stands in here. Growing after
    every finite step, its scale counts the steps it has seen."""
    from hf_sae import SaeConfig
    from hf_sae.activations import ShufflingBuffer
    from hf_sae.training import make_accelerator

    torch.manual_seed(0)
    stream = [{"h": torch.randn(64, 8)} for _ in range(10)]

    def trainer(**overrides) -> SaeTrainer:
        args = SaeTrainingArguments(train_tokens=64 * 10, batch_size=64, report_to="none", save_steps=5,
                                    save_total_limit=5, output_dir=str(tmp_path), **overrides)  # fmt: skip
        accelerator = make_accelerator(args)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
        sae = SaeModel(SaeConfig(d_in=8, num_latents=32, k=4, hookpoint="h"))
        buffer = ShufflingBuffer(lambda skip: iter(stream[skip:]), batch_size=64, capacity=0)
        return SaeTrainer(args, {"h": sae}, buffer, accelerator=accelerator)

    straight = trainer()
    straight.train()
    assert straight.accelerator.scaler.get_scale() == 1024 * 2**10  # the scaler scaled and grew at every step
    saved = torch.load(tmp_path / "checkpoint-5" / "weights_rank0.pt", weights_only=True)["scaler"]
    assert saved["scale"] == 1024 * 2**5
    resumed = trainer(resume_from_checkpoint="checkpoint-5")
    resumed.train()
    assert resumed.accelerator.scaler.get_scale() == 1024 * 2**10  # a fresh scaler would end at 1024 * 2**5


# ---- finished work is never lost; checkpoints with NaN weights ------------------------------------------------------


def short_then_long_documents(root: Path) -> Path:
    """79 documents of 40 words, but the held-out one (every 50th: the 50th) has 5 words: 6 tokens with its EOS."""
    words = [f"w{i}" for i in range(90)]
    rng = random.Random(1)
    lines = [json.dumps({"text": " ".join(rng.choices(words, k=5 if i == 49 else 40))}) for i in range(79)]
    (root / "seventy_nine.jsonl").write_text("\n".join(lines) + "\n")
    return root / "seventy_nine.jsonl"


def test_a_held_out_split_without_a_full_block_is_refused_before_training_with_the_fix(tiny_run_inputs, tmp_path,
                                                                                      monkeypatch):  # fmt: skip
    from transformers import AutoTokenizer

    from hf_sae.data import load_token_blocks

    text = short_then_long_documents(tmp_path)
    args = run_args(tiny_run_inputs, tmp_path / "run", dataset_name=str(text), train_tokens=2048, eval_tokens=100)
    tokenizer = AutoTokenizer.from_pretrained(tiny_run_inputs / "lm")
    held_out = DataArguments(dataset_name=str(text), dataset_split="test", context_size=32)
    assert len(load_token_blocks(held_out, tokenizer)) == 0  # the condition: the held-out text makes no block
    monkeypatch.setattr(SaeTrainer, "train", lambda self: pytest.fail("training must not start"))
    message = (r"The held-out text for the final report \(train\[every 50th document\]: 1 document\(s\), 6 token\(s\) "
               r"with EOS\) makes no full block of --context_size 32, so the report would fail after training\. Pass "
               r"--context_size 7 or less .*--eval_tokens 0 to train without")  # fmt: skip
    with pytest.raises(ArgumentError, match=message):
        train_saes(*args)
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    fixed = run_args(tiny_run_inputs, tmp_path / "run", dataset_name=str(text), train_tokens=2048, eval_tokens=100,
                     context_size=7)  # fmt: skip
    report = train_saes(*fixed)  # the fix it names: the report now measures
    assert report["model.layers.1"]["eval_tokens"] == 5 and report["model.layers.1"]["fvu"] > 0


def failing(error: Exception, fired: list):
    """A stand-in that records that it was called, then raises `error`."""

    def fail(*args, **kwargs):
        fired.append(True)
        raise error

    return fail


def test_a_failure_after_training_says_where_the_saved_saes_are(tiny_run_inputs, tmp_path, monkeypatch):
    import hf_sae.runners as runners

    failed = []
    monkeypatch.setattr(runners, "held_out_report", failing(DataError("the held-out text could not be read"), failed))
    message = (r"The trained SAEs were saved to \S+run with their training metrics \(`hf-sae eval --sae \S+run` "
               r"measures them\)\. What failed: DataError: the held-out text could not be read")  # fmt: skip
    with pytest.raises(DataError, match=message):
        train_saes(*run_args(tiny_run_inputs, tmp_path / "run", train_tokens=2048))
    assert failed  # the fault fired, after training
    sae = SaeModel.from_pretrained(tmp_path / "run" / "model.layers.1")
    metrics = json.loads((tmp_path / "run" / "model.layers.1" / "metrics.json").read_text())
    assert sae.config.num_latents == 96 and metrics["train_tokens"] == 2048 and "fvu" not in metrics


def test_saes_whose_card_cannot_be_written_are_saved_alone_where_the_error_says(tiny_run_inputs, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    import re
    import shutil

    import hf_sae.hub as hub

    failed = []
    monkeypatch.setattr(hub, "render_card", failing(RuntimeError("the card template is broken"), failed))
    message = (r"The trained SAEs could not be saved to \S+run; they were saved alone \(weights and configs\) to "
               r"(\S+)\. What failed: RuntimeError: the card template is broken")  # fmt: skip
    with pytest.raises(TrainingError, match=message) as info:
        train_saes(*run_args(tiny_run_inputs, tmp_path / "run", train_tokens=2048, eval_tokens=0))
    assert failed  # the fault fired, at the first save after training
    rescue = Path(re.search(r"to (\S+)\. What failed", str(info.value)).group(1))
    assert SaeModel.from_pretrained(rescue / "model.layers.1").config.num_latents == 96
    shutil.rmtree(rescue)


def test_weights_that_turn_non_finite_are_never_checkpointed(tiny_run_inputs, tmp_path, monkeypatch):
    original_step = SaeTrainer.step

    def poisoned(self, micro_batches):  # the update of step 8 makes a weight NaN; its loss was still finite
        metrics = original_step(self, micro_batches)
        if self.state.step == 7:
            with torch.no_grad():
                self.saes["model.layers.1"].W_enc[0, 0] = float("nan")
        return metrics

    monkeypatch.setattr(SaeTrainer, "step", poisoned)
    with pytest.raises(TrainingError, match=r"The weights became non-finite by step 8: 'model.layers.1.W_enc' \(1 of "
                       r"2,304 values NaN or inf\)\. checkpoint-8 was not written.* the newest intact one is "
                       r"\S+checkpoint-4: resume"):  # fmt: skip
        train_saes(*run_args(tiny_run_inputs, tmp_path / "run", train_tokens=3072, save_steps=4))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]


def test_two_runs_in_one_python_session_each_get_their_own_precision(tmp_path):
    """A notebook trains twice: accelerate's state from the first run (bf16) must not refuse the second (fp32)."""
    from hf_sae import SaeConfig

    batches = [{"h": torch.randn(64, 8, generator=torch.Generator().manual_seed(i))} for i in range(4)]
    for precision in ("bf16", "no", "bf16"):
        args = SaeTrainingArguments(train_tokens=64 * 4, batch_size=64, report_to="none", output_dir=str(tmp_path),
                                    save_steps=0, mixed_precision=precision)  # fmt: skip
        trainer = SaeTrainer(args, {"h": SaeModel(SaeConfig(d_in=8, num_latents=16, k=2, hookpoint="h"))}, batches)
        assert trainer.accelerator.mixed_precision == precision  # the run's own, not the session's first
        trainer.train()
        trainer.end()
