"""Training a cross-layer transcoder through the shared loop (`hf-sae train --clt`): the harvest it sees, what
training does to its loss, exact resume, the scale folded into what it saves, two real processes, the memory check
and the flags refused before the LM loads."""

import json
import sys
from pathlib import Path

import pytest
import test_distributed
import torch
from test_distributed import common_flags, launch_all, ran
from test_training import run_args, tiny_run_inputs  # noqa: F401  (the module-scoped fixture)

from hf_sae import ArgumentError, CltConfig, CltModel, SaeConfigError
from hf_sae.activation_cache import ActivationCache
from hf_sae.activations import harvest
from hf_sae.arguments import SaeTrainingArguments
from hf_sae.memory import TRAINING_BYTES_PER_WEIGHT, clt_weights
from hf_sae.models import load_model
from hf_sae.runners import train_saes
from hf_sae.trainees import CltTrainee
from hf_sae.training import SaeTrainer

LAYERS = 3  # the tiny Llama's
CLT = dict(clt=True, hookpoints=["model.layers.1"], architecture="topk", k=4, num_latents=48, sparsity_coefficient=0.0)


def clt_args(root: Path, output_dir: Path, **overrides) -> tuple:
    return run_args(root, output_dir, **{**CLT, **overrides})


def mlp_activations(lm, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's MLP input and output `(batch, seq, n_layers, d)`, read with hooks written here."""
    inputs, outputs, handles = {}, {}, []
    for layer, block in enumerate(lm.model.layers):

        def record(module, args, output, layer=layer):
            inputs[layer], outputs[layer] = args[0].detach(), output.detach()

        handles.append(block.mlp.register_forward_hook(record))
    try:
        with torch.no_grad():
            lm(ids)
    finally:
        for handle in handles:
            handle.remove()
    stack = lambda found: torch.stack([found[layer] for layer in range(len(found))], dim=-2)  # noqa: E731
    return stack(inputs), stack(outputs)


def held_out_blocks(root: Path, tokenizer) -> torch.Tensor:
    """The test split cut into blocks of 32 as the library cuts them: BOS, then 31 tokens of the EOS-joined text."""
    texts = [json.loads(line)["text"] for line in (root / "text" / "test.jsonl").read_text().splitlines()]
    ids = [i for text in texts for i in tokenizer(text)["input_ids"] + [2]]
    return torch.tensor([[1] + ids[i : i + 31] for i in range(0, len(ids) - 30, 31)])


def per_layer_fvu(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n_layers,): each layer's squared error over its variance about the mean, tokens on the first axis."""
    error = (prediction - target).pow(2).sum((0, -1))
    return error / (target - target.mean(0)).pow(2).sum((0, -1))


# ---- the harvest ----------------------------------------------------------------------------------------------------


def test_the_harvest_gives_the_clt_exactly_every_mlps_input_and_output(tiny_run_inputs):  # noqa: F811
    lm, _ = load_model(str(tiny_run_inputs / "lm"))
    config = CltConfig(n_layers=LAYERS, d_in=24, num_latents=8, architecture="topk", k=2)
    ids = torch.randint(3, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    chunk = next(harvest(lm, [*config.hookpoints, *config.output_hookpoints], [ids],
                         exclude_token_ids=torch.tensor([0, 1, 2]), outlier_factor=None))  # fmt: skip
    trainee = CltTrainee(CltModel(config))
    x, y = mlp_activations(lm, ids)
    assert x.shape == (2, 11, LAYERS, 24) and not torch.equal(x[..., 0, :], x[..., 1, :])  # the layers differ
    assert torch.equal(trainee.inputs(chunk), x[:, 1:].reshape(-1, LAYERS, 24))  # position 0 dropped, as always
    assert torch.equal(trainee.targets(chunk), y[:, 1:].reshape(-1, LAYERS, 24))


# ---- training -------------------------------------------------------------------------------------------------------


def test_training_lowers_the_summed_normalised_mse_on_the_models_mlp_activations(tiny_run_inputs, tmp_path):  # noqa: F811
    report = train_saes(*clt_args(tiny_run_inputs, tmp_path / "run", train_tokens=12288, eval_tokens=500_000))["clt"]
    clt = CltModel.from_pretrained(tmp_path / "run")
    assert (clt.config.n_layers, clt.config.num_latents, clt.config.k) == (LAYERS, 48, 4)
    assert clt.config.hookpoints == [f"model.layers.{layer}.mlp.input" for layer in range(LAYERS)]
    assert clt.config.base_model_name_or_path == str(tiny_run_inputs / "lm")
    lm, tokenizer = load_model(str(tiny_run_inputs / "lm"))
    blocks = held_out_blocks(tiny_run_inputs, tokenizer)
    x, y = mlp_activations(lm, blocks)
    keep = blocks[:, 1:] != 2  # position 0 and EOS dropped (tiny activations: no outliers to drop)
    x, y = x[:, 1:][keep], y[:, 1:][keep]
    with torch.no_grad():
        trained = per_layer_fvu(clt(x).reconstruction, y)
        untrained = per_layer_fvu(CltModel(clt.config).eval()(x).reconstruction, y)
    assert trained.sum() < untrained.sum()  # the loss's own term: summed per-layer FVUs
    assert (trained < 0.95).all()  # every layer better than its mean, which scores 1 (untrained: far worse)
    for layer in range(LAYERS):  # the held-out report measures the same
        assert report["per_layer"][str(layer)]["fvu"] == pytest.approx(trained[layer].item(), rel=0.02)
    assert report["fvu"] == pytest.approx(trained.mean().item(), rel=0.02)
    assert report["l0"] == pytest.approx(4.0) and report["eval_tokens"] == pytest.approx(x.shape[0], rel=0.02)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["clt"]["per_layer"] == report["per_layer"]


def test_the_saved_clt_takes_raw_activations(tiny_run_inputs, tmp_path):  # noqa: F811
    """Its FVU on raw activations equals the trainer's FVU on the scaled ones it trained on, layer by layer."""
    lm, _ = load_model(str(tiny_run_inputs / "lm"))
    config = CltConfig(n_layers=LAYERS, d_in=24, num_latents=48, architecture="jumprelu", sparsity_coefficient=1e-4)
    ids = torch.randint(3, 90, (16, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    chunks = list(harvest(lm, [*config.hookpoints, *config.output_hookpoints], ids.split(4),
                          exclude_token_ids=torch.tensor([0, 1, 2])))  # fmt: skip
    batch = {h: torch.cat([chunk[h] for chunk in chunks])[:480] for h in chunks[0]}
    args = SaeTrainingArguments(train_tokens=480 * 20, batch_size=480, output_dir=str(tmp_path), report_to="none",
                                save_steps=0, mixed_precision="no")  # fmt: skip
    trainer = SaeTrainer(args, {"clt": CltModel(config)}, [batch] * 20)
    saved = trainer.train()["clt"]
    scales, output_scales = trainer.state.scales["clt"], trainer.state.output_scales["clt"]
    assert len(scales) == LAYERS and len(set(scales)) == LAYERS  # one scale per layer, and they differ
    trainee = trainer.trainees["clt"]
    x, y = trainee.inputs(batch), trainee.targets(batch)
    with torch.no_grad():
        training = trainer.saes["clt"].eval()
        scaled_y = y * torch.tensor(output_scales)[:, None]
        on_scaled = per_layer_fvu(training(x * torch.tensor(scales)[:, None]).reconstruction, scaled_y)
        on_raw = per_layer_fvu(saved(x).reconstruction, y)
    torch.testing.assert_close(on_raw, on_scaled, rtol=1e-4, atol=1e-6)
    assert (on_raw < 1).all()  # it trained


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_run_inputs, tmp_path, monkeypatch):  # noqa: F811
    train_saes(*clt_args(tiny_run_inputs, tmp_path / "straight", architecture="batchtopk"))
    original_step = SaeTrainer.step

    def crashing_step(self, micro_batches):
        if self.state.step == 13:
            raise KeyboardInterrupt  # the process dies after checkpoint-10, in the middle of the run
        return original_step(self, micro_batches)

    monkeypatch.setattr(SaeTrainer, "step", crashing_step)
    args = clt_args(tiny_run_inputs, tmp_path / "resumed", architecture="batchtopk", save_steps=5, save_total_limit=5)
    with pytest.raises(KeyboardInterrupt):
        train_saes(*args)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    monkeypatch.setattr(SaeTrainer, "step", original_step)
    args = clt_args(tiny_run_inputs, tmp_path / "resumed", architecture="batchtopk", save_steps=5,
                    resume_from_checkpoint="latest")  # fmt: skip
    train_saes(*args)
    straight, resumed = (CltModel.from_pretrained(tmp_path / run) for run in ("straight", "resumed"))
    assert not torch.equal(straight.W_enc, CltModel(straight.config).W_enc)  # it trained
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_a_checkpoint_of_another_clt_is_refused_on_resume(tiny_run_inputs, tmp_path):  # noqa: F811
    train_saes(*clt_args(tiny_run_inputs, tmp_path / "run", save_steps=5))
    args = clt_args(tiny_run_inputs, tmp_path / "run", num_latents=64, resume_from_checkpoint="latest")
    with pytest.raises(Exception, match=r"clt num_latents: checkpoint 48, now 64"):
        train_saes(*args)


def test_a_clt_trains_from_an_activation_cache_of_every_mlp(tiny_run_inputs, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    report = train_saes(*clt_args(tiny_run_inputs, tmp_path / "live", activation_cache=str(cache)))["clt"]
    replayed = train_saes(*clt_args(tiny_run_inputs, tmp_path / "replay", activation_cache=str(cache), epochs=1.0))
    expected = {f"model.layers.{layer}.mlp{suffix}": 24 for layer in range(LAYERS) for suffix in ("", ".input")}
    assert ActivationCache(cache).widths == expected  # every MLP's input and output, written once and replayed
    assert replayed["clt"]["train_epochs"] == pytest.approx(1.0, abs=0.1) and report["train_epochs"] > 0
    assert replayed["clt"]["fvu"] < 0.95 and report["fvu"] < 0.95


DRIVER = """
import sys, torch
from hf_sae.cli import main
from hf_sae.training import SaeTrainer
trained_saes = SaeTrainer.trained_saes
def recording(self):  # each rank's own weights at the end, before anything is gathered or saved
    torch.save(self.saes["clt"].state_dict(), f"{sys.argv[1]}/rank{self.accelerator.process_index}.pt")
    return trained_saes(self)
SaeTrainer.trained_saes = recording
sys.exit(main(["train", *sys.argv[2:]]))
"""


def test_two_processes_train_one_clt_in_step(tiny_run_inputs, tmp_path, monkeypatch):  # noqa: F811
    (tmp_path / "driver.py").write_text(DRIVER)
    flags = [flag for flag in common_flags(tiny_run_inputs) if flag not in ("--hookpoints", "model.layers.1")]
    flags += ["--clt", "true", "--clt_layers", "0-2", "--num_latents", "32"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local_addr", "127.0.0.1",
                "--nproc_per_node", "2"]  # fmt: skip
    launchers = {"one": [sys.executable], "two": torchrun}
    commands = {run: [*launcher, str(tmp_path / "driver.py"), str(tmp_path / run), *flags, "--output_dir",
                      str(tmp_path / run / "out")] for run, launcher in launchers.items()}  # fmt: skip
    environment = test_distributed.environment
    monkeypatch.setattr(test_distributed, "environment", lambda: {**environment(), "ACCELERATE_USE_CPU": "1"})
    for run, command in commands.items():
        (tmp_path / run).mkdir()
        result = launch_all([command])[0]
        assert result.returncode == 0, result.stderr[-3000:]
        world = len(commands) if run == "two" else 1
        assert ran(result.stderr, world) == set(range(world))  # two real processes, each in a world of two
    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    alone = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name  # the gradients were averaged: both ranks hold one model
    saved = CltModel.from_pretrained(tmp_path / "two" / "out")
    assert saved.config.n_layers == LAYERS
    assert not torch.equal(saved.W_enc, CltModel(saved.config).W_enc)  # it trained
    # Near the one-process run, not equal: each rank divides its squared error by its own micro-batch's variance per
    # layer (the loss's normalisation), which no split of the batch keeps.
    for name, tensor in alone.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=0, atol=2e-2)


# ---- refused before the LM loads ------------------------------------------------------------------------------------


@pytest.fixture
def lm_never_loads(monkeypatch):
    """Make loading the LM fail the test: what is refused must be refused before it."""
    import hf_sae.runners

    def load_lm(*args, **kwargs):
        raise AssertionError("the LM was loaded")

    monkeypatch.setattr(hf_sae.runners, "load_lm", load_lm)


def test_the_memory_check_refuses_a_clt_too_large_before_the_lm_loads(tiny_run_inputs, tmp_path, lm_never_loads):  # noqa: F811
    with pytest.raises(ArgumentError) as refused:
        train_saes(*clt_args(tiny_run_inputs, tmp_path / "run", num_latents=10**9))
    message = str(refused.value)
    needed = TRAINING_BYTES_PER_WEIGHT * clt_weights(LAYERS, 10**9, 24)
    assert f"3 layers x 1,000,000,000 latents (d_in 24: {clt_weights(LAYERS, 10**9, 24):,} weights" in message
    assert f"({needed + 4 * (2048 + 256) * 2 * LAYERS * 24:,} bytes) to train" in message  # weights + the buffer
    assert "Lower --num_latents" in message and "--clt_layers" in message


def test_the_memory_rule_counts_what_the_model_allocates():
    for layers, latents, width in [(3, 48, 24), (30, 512, 576)]:
        config = CltConfig(n_layers=layers, d_in=width, num_latents=latents, architecture="topk", k=4)
        biases = layers * latents + layers * width  # b_enc, b_dec: not counted by the rule
        assert clt_weights(layers, latents, width) == config.num_weights() - biases
    assert TRAINING_BYTES_PER_WEIGHT * clt_weights(30, 2304, 576) == pytest.approx(10.5e9, rel=0.01)  # the docs' row


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            dict(clt_layers="0-5"),
            ArgumentError,
            r"--clt_layers must be layers of the LM's 3 .*\[3, 4, 5\] are out",
        ),
        (dict(clt_layers="one"), ArgumentError, r"--clt_layers must be `all`, a range such as `0-5`"),
        (dict(clt_layers="1,1"), ArgumentError, r"--clt_layers names \[1\] more than once"),
        (
            dict(architecture="relu"),
            ArgumentError,
            r"--architecture must be one of \['jumprelu', 'topk', 'batchtopk'",
        ),
        (dict(k=64), ArgumentError, r"--k must be at most --num_latents 48; got 64"),
        (dict(num_latents=None, expansion_factor=0.1, k=4), SaeConfigError, r"`k` must be an integer in \[1, num_la"),
        (dict(distribute_hookpoints=True), ArgumentError, r"--distribute_hookpoints .* cross-layer transcoder is one"),
        (dict(transcode=True), ArgumentError, r"--transcode must be left false with --clt"),
    ],
)
def test_bad_clt_flags_are_refused_by_name_before_the_lm_loads(tiny_run_inputs, tmp_path, lm_never_loads, overrides,  # noqa: F811
                                                               error, message):  # fmt: skip
    with pytest.raises(error, match=message):
        train_saes(*clt_args(tiny_run_inputs, tmp_path / "run", **overrides))
