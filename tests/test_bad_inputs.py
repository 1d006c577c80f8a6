# ruff: noqa: E501 (the catalogue is a table, one row a line)
"""A catalogue of bad inputs: each row is an input, the error class it must raise, a fragment of the message, and
nothing on disk changed. Then the faults: a read-only folder, a full disk, and a run killed mid-way (SIGTERM,
kill -9) that resumes to the same weights.

Rows run against one shared world (a tiny Llama and text on disk, saved SAEs, a training run with checkpoints, a
Hub-protocol server on 127.0.0.1) whose every file is hashed before and after each row.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm, save_tiny_llama_and_corpus
from hub_server import HubServer, point_client_at
from safetensors.torch import load_file

from hf_sae import (
    ArgumentError,
    DataError,
    FeatureMetadataError,
    FileFormatError,
    HookpointError,
    HubError,
    ModelNotFoundError,
    SaeConfig,
    SaeConfigError,
    SaeHooks,
    SaeModel,
    SaeNotFoundError,
    SteeringError,
    TrainingError,
    WeightsError,
    WriteError,
    load_saes,
    push_saes_to_hub,
)
from hf_sae.arguments import TRAIN_GROUPS, group_arguments
from hf_sae.cli import main
from hf_sae.runners import train_saes

ALICE = "hf_alice_write"
HOOKPOINT = "model.layers.1"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@dataclass
class World:
    root: Path
    hooks: SaeHooks
    hub: HubServer

    def train_flags(self, **overrides) -> list[str]:
        """`hf-sae train` flags for a short run on the tiny model, writing into a folder that does not exist."""
        flags = {"model_name_or_path": self.root / "lm", "dataset_name": self.root / "text", "hookpoints": HOOKPOINT,
                 "k": 4, "expansion_factor": 4, "context_size": 32, "train_tokens": 2048, "batch_size": 256,
                 "shuffle_buffer_tokens": 1024, "output_dir": self.root / "new-run", "report_to": "none",
                 "eval_tokens": 0, "lm_dtype": "float32"} | overrides  # fmt: skip
        return [item for key, value in flags.items() for item in (f"--{key}", str(value))]

    def resume(self, **overrides):
        """Resume the world's run (which has checkpoints) with changed arguments."""
        return main(["train", *self.train_flags(output_dir=self.root / "run", resume_from_checkpoint="latest",
                                                **overrides)])  # fmt: skip


def run_args(root: Path, output_dir: Path, **overrides) -> tuple:
    flat = dict(model_name_or_path=str(root / "lm"), hookpoints=[HOOKPOINT], k=4, expansion_factor=4,
                dataset_name=str(root / "text"), context_size=32, train_tokens=2048, batch_size=256,
                shuffle_buffer_tokens=1024, output_dir=str(output_dir), report_to="none", eval_tokens=0,
                save_steps=0, lm_dtype="float32")  # fmt: skip
    return group_arguments(TRAIN_GROUPS, **{**flat, **overrides})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    save_tiny_llama_and_corpus(root, num_words=90, hidden_size=24, intermediate_size=37, num_layers=3, heads=4,
                               kv_heads=2, documents={"train": 200, "test": 20},
                               words_per_document=(20, 60))  # fmt: skip
    torch.manual_seed(0)
    sae = SaeModel(SaeConfig(d_in=24, num_latents=48, k=4, hookpoint=HOOKPOINT))
    sae.save_pretrained(root / "sae")
    (root / "sae" / "features").mkdir()  # an earlier run's statistics
    (root / "sae" / "features" / "stats.json").write_text("{}")
    layer = {h: SaeModel(SaeConfig(d_in=24, num_latents=48, k=4, hookpoint=h)) for h in ("model.layers.0",
                                                                                        "model.layers.1", "model.layers.2")}  # fmt: skip
    for hookpoint in ("model.layers.0", "model.layers.1"):
        layer[hookpoint].save_pretrained(root / "saes" / hookpoint)
    train_saes(*run_args(root, root / "run", train_tokens=3072, save_steps=4, save_total_limit=3))
    (root / "eval").mkdir()
    (root / "eval" / "eval_results.json").write_text("{}")  # an earlier report
    lm = make_tiny_lm("llama")
    hooks = SaeHooks(lm.model, [SaeModel(SaeConfig(d_in=24, num_latents=48, k=4, hookpoint=HOOKPOINT))])
    with HubServer() as server, pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, server.url, tmp_path_factory.mktemp("hf-home"))
        push_saes_to_hub("alice/saes", {h: layer[h] for h in ("model.layers.0", "model.layers.2")}, token=ALICE)
        yield World(root, hooks, server)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root`, with each file's content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}  # fmt: skip


def damaged_copy(world: World, tmp: Path, damage: Callable[[Path], None]) -> Path:
    """A copy of the world's run, damaged by `damage(newest checkpoint)`."""
    copy = tmp / "run"
    shutil.copytree(world.root / "run", copy)
    damage(sorted(copy.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1])
    return copy


def resume_copy(world: World, copy: Path):
    return main(["train", *world.train_flags(output_dir=copy, resume_from_checkpoint="latest")])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


def plant_payload(checkpoint: Path) -> None:
    torch.save({"step": _RunsCode()}, checkpoint / "trainer_state.pt")


def huge_config(tmp: Path) -> Path:
    """A 2 kB weights file under a config.json that claims 10^10 latents (40 GB in fp32)."""
    folder = tmp / "huge"
    SaeModel(SaeConfig(d_in=24, num_latents=48, k=4)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_latents": 10**10}))
    return folder


def copy_sae(world: World, tmp: Path, change: Callable[[Path], None]) -> Path:
    folder = tmp / "sae"
    shutil.copytree(world.root / "sae", folder)
    change(folder)
    return folder


def pickle_only(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({"weights": weights, "code": _RunsCode()}, folder / "pytorch_model.bin")


def write_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | values))


def steer(world: World, features, **kwargs):
    with world.hooks.steer(features, **kwargs):
        return world.hooks.model(torch.tensor([[1, 5, 6, 7]])).logits


def yaml_file(tmp: Path, text: str) -> str:
    (tmp / "run.yaml").write_text(text)
    return str(tmp / "run.yaml")


def down_endpoint(world: World, call: Callable):
    """`call` with the Hub client pointed at a port where nothing listens, its retries' sleeps skipped."""
    import huggingface_hub.utils._http as http
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
        patch.setattr(http.time, "sleep", lambda seconds: None)
        return call()


def train(world: World, **flags):
    return main(["train", *world.train_flags(**flags)])


def cli(*argv):
    return lambda w, tmp: main([str(a).format(root=w.root, tmp=tmp) for a in argv])


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable  # (world, tmp) -> anything; must raise `error`
    error: type[Exception]
    fragment: str  # a regular expression the message must match


T = train
ROWS = [
    # ---- hf-sae train: every argument checked before the LM loads ----------------------------------------------
    Row("batch_size 0", lambda w, t: T(w, batch_size=0), ArgumentError, r"--batch_size must be a positive integer; got 0"),
    Row("logging_steps 0", lambda w, t: T(w, logging_steps=0), ArgumentError, r"--logging_steps must be a positive"),
    Row("save_steps -1", lambda w, t: T(w, save_steps=-1), ArgumentError, r"--save_steps must be 0 \(never\) or"),
    Row("train_tokens 0", lambda w, t: T(w, train_tokens=0), ArgumentError, r"--train_tokens must be at least --batch"),
    Row("learning_rate -1", lambda w, t: T(w, learning_rate=-1), ArgumentError, r"--learning_rate must be a number > 0"),
    Row("learning_rate nan", lambda w, t: T(w, learning_rate="nan"), ArgumentError, r"--learning_rate must be a finite"),
    Row("expansion_factor inf", lambda w, t: T(w, expansion_factor="inf"), ArgumentError, r"expansion_factor must be a finite"),
    Row("expansion_factor 0", lambda w, t: T(w, expansion_factor=0), ArgumentError, r"--expansion_factor must be a number > 0"),
    Row("num_latents 1e10", lambda w, t: T(w, num_latents=10**10), ArgumentError, r"--num_latents 10,000,000,000 .*GiB .*Lower"),
    Row("expansion_factor 1e8", lambda w, t: T(w, expansion_factor=1e8), ArgumentError, r"--num_latents 2,400,000,000 \(d_in 24, 1 SAE\(s\)\) needs about [\d,.]+ GiB"),
    Row("k 0", lambda w, t: T(w, k=0), ArgumentError, r"--k must be a positive integer for topk; got 0"),
    Row("k too large", lambda w, t: T(w, k=96), SaeConfigError, r"`k` must be smaller than `num_latents` \(96\)"),
    Row("sparsity_coefficient -1", lambda w, t: T(w, sparsity_coefficient=-1), ArgumentError, r"--sparsity_coefficient must be >= 0"),
    Row("warmup 1.5", lambda w, t: T(w, lr_warmup_fraction=1.5), ArgumentError, r"--lr_warmup_fraction must be a fraction"),
    Row("warmup + decay > 1", lambda w, t: T(w, lr_warmup_fraction=0.6, lr_decay_fraction=0.6), ArgumentError, r"at most 1 - --lr_warmup_fraction"),
    Row("max_grad_norm -1", lambda w, t: T(w, max_grad_norm=-1), ArgumentError, r"--max_grad_norm must be a number >= 0"),
    Row("accumulation 0", lambda w, t: T(w, gradient_accumulation_steps=0), ArgumentError, r"--gradient_accumulation_steps must be a positive"),
    Row("batch not divisible", lambda w, t: T(w, batch_size=250, gradient_accumulation_steps=3), ArgumentError, r"--batch_size 250 must divide evenly over 1 process\(es\) x 3"),
    Row("context_size 1", lambda w, t: T(w, context_size=1), ArgumentError, r"--context_size must be at least 2"),
    Row("context_size too long", lambda w, t: T(w, context_size=100), DataError, r"context_size <= 64"),
    Row("shuffle buffer -5", lambda w, t: T(w, shuffle_buffer_tokens=-5), ArgumentError, r"--shuffle_buffer_tokens must be >= 0"),
    Row("eval_tokens -1", lambda w, t: T(w, eval_tokens=-1), ArgumentError, r"--eval_tokens must be 0 \(skip\)"),
    Row("save_total_limit 0", lambda w, t: T(w, save_total_limit=0), ArgumentError, r"--save_total_limit must be a positive"),
    Row("dead_after_tokens 0", lambda w, t: T(w, dead_after_tokens=0), ArgumentError, r"--dead_after_tokens must be a positive"),
    Row("lm_batch_size 0", lambda w, t: T(w, lm_batch_size=0), ArgumentError, r"--lm_batch_size must be a positive"),
    Row("outlier_factor 0", lambda w, t: T(w, outlier_factor=0), ArgumentError, r"--outlier_factor must be a number > 0"),
    Row("num_processes 0", lambda w, t: T(w, num_processes=0), ArgumentError, r"--num_processes must be a positive"),
    Row("ddp_timeout 0", lambda w, t: T(w, ddp_timeout=0), ArgumentError, r"--ddp_timeout must be a positive"),
    Row("unknown flag", cli("train", "--batchsize", "3"), ArgumentError, r"does not take \['--batchsize', '3'\]\. --batchsize: did you mean --batch_size\?"),
    Row("k not a number", lambda w, t: T(w, k="abc"), ArgumentError, r"argument --k: invalid int value: 'abc'\. `hf-sae train --help`"),
    Row("architecture typo flag", lambda w, t: T(w, architecture="topkk"), ArgumentError, r"argument --architecture: invalid choice: 'topkk'"),
    Row("yaml missing file", lambda w, t: main(["train", f"{t}/none.yaml"]), ArgumentError, r"Cannot read the argument file .*none.yaml \(No such file"),
    Row("yaml malformed", lambda w, t: main(["train", yaml_file(t, "k: [1\n")]), ArgumentError, r"run.yaml is not valid YAML or JSON: while parsing"),
    Row("yaml k not a number", lambda w, t: main(["train", yaml_file(t, "k: abc\n")]), ArgumentError, r"invalid int value: 'abc' \(the values of .*run.yaml count as flags\)"),
    Row("resume latest without checkpoints", lambda w, t: T(w, output_dir=t / "empty", resume_from_checkpoint="latest"), TrainingError, r"--resume_from_checkpoint latest: .*empty holds no checkpoint\. .*Drop the flag"),
    Row("missing model", lambda w, t: T(w, model_name_or_path="./no/such/model"), ModelNotFoundError, r"'./no/such/model' does not exist locally"),
    Row("missing dataset", lambda w, t: T(w, dataset_name="./no/such.jsonl"), DataError, r"does not exist"),
    Row("unknown hookpoint", lambda w, t: T(w, hookpoints="model.layers.9"), HookpointError, r"model.layers.9.*closest"),
    Row("text column", lambda w, t: T(w, text_column="body"), DataError, r"'body'"),
    Row("yaml unknown key", lambda w, t: main(["train", yaml_file(t, "widht: 3\n")]), ArgumentError, r"sets \['widht'\], which `hf-sae train` does not take"),
    Row("yaml a list", lambda w, t: main(["train", yaml_file(t, "- 1\n- 2\n")]), ArgumentError, r"must hold a mapping .*got list"),
    Row("yaml bad choice", lambda w, t: main(["train", yaml_file(t, "report_to: tensorbord\n")]), ArgumentError, r"--report_to must be one of \['tensorboard'"),
    Row("yaml list for int", lambda w, t: main(["train", yaml_file(t, "train_tokens: [1, 2]\n")]), ArgumentError, r"--train_tokens must be an integer; got \[1, 2\]"),
    Row("yaml bool for int", lambda w, t: main(["train", yaml_file(t, "batch_size: true\n")]), ArgumentError, r"--batch_size must be an integer; got True"),
    Row("mixed_precision fp8", lambda w, t: main(["train", yaml_file(t, "mixed_precision: fp8\n")]), ArgumentError, r"--mixed_precision must be one of"),
    Row("negative mixing weight", lambda w, t: T(w, dataset_name=f"{w.root}/text", dataset_weights=-1), ArgumentError, r"--dataset_weights must be finite numbers >= 0"),
    Row("output holds a run", lambda w, t: T(w, output_dir=w.root / "run"), TrainingError, r"already holds a run .*--overwrite_output_dir"),
    # ---- resume ----------------------------------------------------------------------------------------------------
    Row("resume changed k", lambda w, t: w.resume(k=8), TrainingError, r"other arguments: model.layers.1 k: checkpoint 4, now 8"),
    Row("resume changed width", lambda w, t: w.resume(expansion_factor=2), TrainingError, r"num_latents: checkpoint 96, now 48"),
    Row("resume changed architecture", lambda w, t: w.resume(architecture="relu", k="none"), TrainingError, r"architecture: checkpoint 'topk', now 'relu'"),
    Row("resume changed hookpoint", lambda w, t: w.resume(hookpoints="model.layers.0"), TrainingError, r"SAE 'model.layers.0': not in the checkpoint; SAE 'model.layers.1': not in this run"),
    Row("resume changed dataset", lambda w, t: w.resume(dataset_name=f"{w.root}/text/train.jsonl"), TrainingError, r"--dataset_name: checkpoint '.*text', now '.*train.jsonl'"),
    Row("resume changed batch", lambda w, t: w.resume(batch_size=128, train_tokens=2048), TrainingError, r"--batch_size: checkpoint 256, now 128"),
    Row("resume another world size", lambda w, t: resume_copy(w, damaged_copy(w, t, lambda c: torch.save({**torch.load(c / "trainer_state.pt", weights_only=True), "world_size": 2}, c / "trainer_state.pt"))), TrainingError, r"written by a run on 2 process\(es\); this one has 1"),
    Row("resume truncated weights", lambda w, t: resume_copy(w, damaged_copy(w, t, lambda c: truncate(c / "weights_rank0.pt"))), TrainingError, r"checkpoint-8/weights_rank0.pt cannot be loaded .*the newest intact one is .*checkpoint-4"),
    Row("resume truncated state", lambda w, t: resume_copy(w, damaged_copy(w, t, lambda c: truncate(c / "trainer_state.pt"))), TrainingError, r"trainer_state.pt cannot be loaded .*newest intact one is .*checkpoint-4"),
    Row("resume pickle payload", lambda w, t: resume_copy(w, damaged_copy(w, t, plant_payload)), TrainingError, r"refused rather than run"),
    Row("resume missing checkpoint", lambda w, t: T(w, resume_from_checkpoint=f"{t}/checkpoint-3"), TrainingError, r"No complete checkpoint at .*checkpoint-3"),
    # ---- eval, features, browse, convert, pull ---------------------------------------------------------------------
    Row("eval missing sae", cli("eval", "--sae", "./no/such/sae", "--output_dir", "{tmp}/e"), SaeNotFoundError, r"--sae './no/such/sae' does not exist .*not looked up on the Hub"),
    Row("eval eval_tokens 0", cli("eval", "--sae", "{root}/sae", "--output_dir", "{tmp}/e", "--eval_tokens", "0"), ArgumentError, r"--eval_tokens must be a positive"),
    Row("eval dense_threshold 2", cli("eval", "--sae", "{root}/sae", "--output_dir", "{tmp}/e", "--dense_threshold", "2"), ArgumentError, r"--dense_threshold must be a fraction"),
    Row("eval over a report", cli("eval", "--sae", "{root}/sae", "--output_dir", "{root}/eval"), ArgumentError, r"eval_results.json exists\): pass --overwrite"),
    Row("features max_tokens 0", cli("features", "--sae", "{root}/sae", "--max_tokens", "0", "--overwrite"), ArgumentError, r"--max_tokens must be a positive integer; got 0"),
    Row("features over statistics", cli("features", "--sae", "{root}/sae"), ArgumentError, r"features exists\): pass --overwrite"),
    Row("features top_n 0", cli("features", "--sae", "{root}/sae", "--top_n", "0", "--overwrite"), ArgumentError, r"--top_n must be a positive"),
    Row("features missing sae", cli("features", "--sae", "{tmp}/nothing"), SaeNotFoundError, r"does not exist"),
    Row("browse without features", cli("browse", "--sae", "{root}/saes/model.layers.0", "--output_dir", "{tmp}/b"), FeatureMetadataError, r"features"),
    Row("browse examples 0", cli("browse", "--sae", "{root}/sae", "--output_dir", "{tmp}/b", "--examples", "0"), ArgumentError, r"--examples must be a positive"),
    Row("convert missing src", cli("convert", "./no/such/sae", "{tmp}/c"), SaeNotFoundError, r"--src './no/such/sae' does not exist"),
    Row("convert bad format", lambda w, t: main(["convert", yaml_file(t, f"src: {w.root}/sae\ndst: {t}/c\nto: neuronpedia\n")]), ArgumentError, r"--to must be one of \['saelens'"),
    # ---- SaeConfig -------------------------------------------------------------------------------------------------
    Row("config d_in 0", lambda w, t: SaeConfig(d_in=0, num_latents=8), SaeConfigError, r"`d_in` must be a positive integer; got 0"),
    Row("config d_in string", lambda w, t: SaeConfig(d_in="24", num_latents=8), SaeConfigError, r"`d_in` must be a positive integer; got '24'"),
    Row("config neither size", lambda w, t: SaeConfig(d_in=24), SaeConfigError, r"needs `num_latents` or `expansion_factor`"),
    Row("config topk without k", lambda w, t: SaeConfig(d_in=24, num_latents=48), SaeConfigError, r"needs `k`"),
    Row("config k >= num_latents", lambda w, t: SaeConfig(d_in=24, num_latents=48, k=48), SaeConfigError, r"`k` must be smaller"),
    Row("config unknown architecture", lambda w, t: SaeConfig(d_in=24, num_latents=48, architecture="topq"), SaeConfigError, r"`architecture` must be one of"),
    Row("config nan coefficient", lambda w, t: SaeConfig(d_in=24, num_latents=48, architecture="relu", sparsity_coefficient=float("nan")), SaeConfigError, r"`sparsity_coefficient` must be a number >= 0; got nan"),
    Row("config inf bandwidth", lambda w, t: SaeConfig(d_in=24, num_latents=48, architecture="jumprelu", jumprelu_bandwidth=float("inf")), SaeConfigError, r"`jumprelu_bandwidth` must be a number > 0; got inf"),
    Row("config expansion -1", lambda w, t: SaeConfig(d_in=24, expansion_factor=-1, architecture="relu"), SaeConfigError, r"`expansion_factor` must be a positive number"),
    # ---- loading ---------------------------------------------------------------------------------------------------
    Row("huge config small file", lambda w, t: SaeModel.from_pretrained(huge_config(t)), WeightsError, r"disagrees with its config \(d_in=24, num_latents=10000000000\)"),
    Row("huge config load_saes", lambda w, t: load_saes(huge_config(t)), WeightsError, r"disagrees with its config"),
    Row("no config", lambda w, t: SaeModel.from_pretrained(copy_sae(w, t, lambda f: (f / "config.json").unlink())), SaeNotFoundError, r"No config.json in .*sae, and no SAE folder there"),
    Row("subfolder typo", lambda w, t: SaeModel.from_pretrained(w.root / "saes", subfolder="model.layers.7"), SaeNotFoundError, r"The SAE folders there are: model.layers.0, model.layers.1"),
    Row("truncated weights", lambda w, t: SaeModel.from_pretrained(copy_sae(w, t, lambda f: truncate(f / "model.safetensors"))), WeightsError, r"model.safetensors is not a valid safetensors file"),
    Row("missing local path", lambda w, t: SaeModel.from_pretrained("./no/such/sae"), SaeNotFoundError, r"not looked up on the Hub"),
    Row("load_saes missing path", lambda w, t: load_saes(f"{t}/no/such"), SaeNotFoundError, r"does not exist"),
    Row("pickle-only folder", lambda w, t: load_saes(copy_sae(w, t, pickle_only)), WeightsError, r"has config.json but no model.safetensors"),
    Row("config not json", lambda w, t: load_saes(copy_sae(w, t, lambda f: (f / "config.json").write_text("{"))), FileFormatError, r"config.json is not valid JSON"),
    Row("config other model_type", lambda w, t: load_saes(copy_sae(w, t, lambda f: write_config(f, model_type="llama"))), SaeConfigError, r"model_type 'llama', not 'hf_sae'"),
    Row("weights of another width", lambda w, t: SaeModel.from_pretrained(copy_sae(w, t, lambda f: write_config(f, d_in=12, d_out=12))), WeightsError, r"`W_enc` in the file has shape \(48, 24\) where its config expects \(48, 12\)"),
    Row("load_saes unknown hookpoint", lambda w, t: load_saes(w.root / "saes", ["model.layers.7"]), HookpointError, r"no SAE for hookpoint\(s\) \['model.layers.7'\]"),
    # ---- hooks -----------------------------------------------------------------------------------------------------
    Row("steer a string", lambda w, t: steer(w, "12"), SteeringError, r"got '12'. Write `12`, not `'12'`"),
    Row("steer a float index", lambda w, t: steer(w, 3.5), SteeringError, r"index must be an integer .*got 3.5"),
    Row("steer a bool", lambda w, t: steer(w, True), SteeringError, r"got True of type bool"),
    Row("steer a float tensor", lambda w, t: steer(w, torch.tensor(3.0)), SteeringError, r"got 3.0 of type float"),
    Row("steer nan amount", lambda w, t: steer(w, {3: float("nan")}), SteeringError, r"feature 3 must be a finite number; got nan"),
    Row("steer inf alpha", lambda w, t: steer(w, np.int64(3), alpha=float("inf")), SteeringError, r"finite number; got inf"),
    Row("steer out of range", lambda w, t: steer(w, 48), SteeringError, r"latent indices in \[0, 48\); got 48"),
    Row("steer nothing", lambda w, t: steer(w, []), SteeringError, r"got none"),
    Row("steer a mode typo", lambda w, t: steer(w, 3, mode="mul"), SteeringError, r"`mode` must be 'add' or 'clamp'"),
    Row("steer negative position", lambda w, t: steer(w, 3, positions=[-1]), SteeringError, r"Positions must be token positions >= 0; got -1"),
    Row("ablate a mapping", lambda w, t: w.hooks.ablate({1: 2.0}).__enter__(), SteeringError, r"not a mapping"),
    Row("record top_k 0", lambda w, t: w.hooks.record(top_k=0).__enter__(), HookpointError, r"`top_k` must be a positive integer"),
    Row("hooks unknown module", lambda w, t: SaeHooks(w.hooks.model, {"model.layers.9": SaeModel(SaeConfig(d_in=24, num_latents=48, k=4))}), HookpointError, r"model.layers.9"),
    Row("hooks wrong width", lambda w, t: SaeHooks(w.hooks.model, {HOOKPOINT: SaeModel(SaeConfig(d_in=12, num_latents=48, k=4))}), HookpointError, r"d_in=12, but the hookpoint's activation has width 24"),
    # ---- the Hub ---------------------------------------------------------------------------------------------------
    Row("hub repo not found", lambda w, t: load_saes("alice/nope"), HubError, r"'alice/nope' was not found on http://127.0.0.1"),
    Row("hub revision not found", lambda w, t: load_saes("alice/saes", revision="v9"), HubError, r"no revision 'v9'. Branches: main"),
    Row("hub hookpoint not found", lambda w, t: load_saes("alice/saes", ["model.layers.7"]), HookpointError, r"model.layers.0, model.layers.2"),
    Row("hub subfolder typo", lambda w, t: SaeModel.from_pretrained("alice/saes", subfolder="model.layers.7"), SaeNotFoundError, r"The SAE folders there are: model.layers.0, model.layers.2; pass one"),
    Row("hub no top config", lambda w, t: SaeModel.from_pretrained("alice/saes"), SaeNotFoundError, r"No config.json in repo 'alice/saes' at its top"),
    Row("hub endpoint down, load", lambda w, t: down_endpoint(w, lambda: load_saes("alice/saes")), HubError, r"endpoint http://127.0.0.1:9 could not be reached .*HF_ENDPOINT"),
    Row("hub endpoint down, from_pretrained", lambda w, t: down_endpoint(w, lambda: SaeModel.from_pretrained("alice/saes", subfolder="model.layers.0")), HubError, r"http://127.0.0.1:9 could not be reached"),
    Row("hub endpoint down, push", lambda w, t: down_endpoint(w, lambda: push_saes_to_hub("alice/more", w.root / "saes", token=ALICE)), HubError, r"Pushing to 'alice/more' failed: the Hub endpoint http://127.0.0.1:9"),
    Row("hub read-only token", lambda w, t: push_saes_to_hub("alice/more", w.root / "saes", token="hf_alice_read"), HubError, r"read-only"),
    Row("hub pull bad repo id", cli("pull", "--repo_id", "not a repo"), HubError, r"neither a local folder nor a Hub repo id"),
    Row("hub pull over existing SAEs", cli("pull", "--repo_id", "alice/saes", "--output_dir", "{root}/saes"), ArgumentError, r"already holds SAEs for \['model.layers.0'\]; they were left as they are"),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_a_bad_input_is_refused_clearly_and_changes_nothing(world, row, tmp_path, monkeypatch):
    point_client_at(monkeypatch, world.hub.url, world.root.parent / "hf-home")
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the CLI raises the error itself, for its class and message
    monkeypatch.chdir(tmp_path)
    before = snapshot(world.root)
    with pytest.raises(row.error, match=row.fragment):
        row.call(world, tmp_path)
    assert snapshot(world.root) == before
    assert not (tmp_path / "pwned").exists()  # no payload ran


def test_the_catalogue_covers_every_entry_point():
    assert len(ROWS) >= 60 and len({row.id for row in ROWS}) == len(ROWS)


def test_the_cli_prints_one_clear_message_and_exits_non_zero(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HF_SAE_DEBUG", None)
    command = [sys.executable, "-m", "hf_sae.cli", "train", *world.train_flags(batch_size=0)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "hf-sae train: error: --batch_size must be a positive integer; got 0." in done.stderr
    debug = subprocess.run([*command, "--debug"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ArgumentError" in debug.stderr


def test_a_bf16_sae_edit_that_changes_nothing_is_bit_exact_on_an_fp32_lm():
    lm = make_tiny_lm("llama")
    sae = SaeModel(SaeConfig(d_in=24, num_latents=48, k=4, hookpoint=HOOKPOINT)).to(torch.bfloat16)
    hooks, ids = SaeHooks(lm.model, [sae]), torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        clean = lm.model(ids).logits
        with hooks.steer({5: 0.0}, mode="add"):
            assert torch.equal(lm.model(ids).logits, clean)
        with hooks.splice(error_term=True):
            assert torch.equal(lm.model(ids).logits, clean)
        with hooks.steer(np.int64(5), 2.0):  # what argmax returns, as an index
            steered = lm.model(ids).logits
        with hooks.steer(torch.tensor(5), 2.0):
            assert torch.equal(lm.model(ids).logits, steered)
        with hooks.steer(torch.tensor([5]), 2.0):
            assert torch.equal(lm.model(ids).logits, steered)
    assert not torch.equal(steered, clean)


# ---- faults -----------------------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode
        == 0
    )


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write to: a read-only tmpfs as root (who ignores permissions), else mode 0555."""
    folder = tmp_path / "read-only"
    if _mount_tmpfs(folder, "ro,size=1m"):
        yield folder
        _unmount(folder)
        return
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_a_read_only_output_folder_is_refused_before_the_lm_loads(world, read_only_folder, monkeypatch):
    with pytest.raises(OSError):
        (read_only_folder / "x").write_text("x")  # the fault is real
    monkeypatch.setattr("hf_sae.runners.load_lm", lambda *a, **k: pytest.fail("the LM must not load"))
    args = run_args(world.root, read_only_folder / "run")
    with pytest.raises(WriteError, match=r"--output_dir .*read-only/run cannot be written .*nothing was done"):
        train_saes(*args)


@pytest.mark.parametrize(
    "flags, error, fragment",
    [
        ({"hookpoints": "model.layers.9"}, HookpointError, r"model.layers.9.*closest"),
        ({"context_size": 100}, DataError, r"context_size <= 64"),
        ({"resume_from_checkpoint": "no/such/checkpoint-3"}, TrainingError, r"No complete checkpoint at no/such"),
    ],
    ids=["hookpoint", "context", "checkpoint"],
)
def test_what_the_lm_config_decides_is_refused_before_its_weights_load(world, flags, error, fragment, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_SAE_DEBUG", "1")
    monkeypatch.setattr("hf_sae.runners.load_lm", lambda *a, **k: pytest.fail("the LM must not load"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("no weights are read"))
    with pytest.raises(error, match=fragment):
        train(world, **flags)
    if "hookpoints" in flags:
        lm_and_text = ["--model_name_or_path", str(world.root / "lm"), "--dataset_name", str(world.root / "text")]
        with pytest.raises(error, match=fragment):
            main(["cache", *lm_and_text, "--hookpoints", "model.layers.9", "--output_dir", str(world.root / "no")])
        with pytest.raises(error, match=fragment):  # the SAE loads (small); its LM does not
            main(["features", *lm_and_text, "--sae", str(world.root / "sae"), "--hookpoint", "model.layers.9",
                  "--overwrite"])  # fmt: skip


def test_results_that_cannot_be_saved_go_to_a_named_fallback(world, tmp_path, monkeypatch):
    from hf_sae import hub

    real_stage, calls = hub._stage_sae, []

    def full_disk(folder, *args):  # the output folder's disk fills up after training
        calls.append(folder)
        if "hf_sae-unsaved-" not in str(folder):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))
        return real_stage(folder, *args)

    monkeypatch.setattr(hub, "_stage_sae", full_disk)
    with pytest.raises(
        WriteError, match=r"could not be saved to .*out .*No space left.*saved to (\S+) instead"
    ) as info:
        train_saes(*run_args(world.root, tmp_path / "out"))
    rescue = Path(re.search(r"saved to (\S+) instead", str(info.value)).group(1))
    assert len(calls) == 2 and SaeModel.from_pretrained(rescue / HOOKPOINT).config.num_latents == 96
    assert not list((tmp_path / "out").glob(".staging-*"))  # the failed write left no temporary folder
    shutil.rmtree(rescue)


@pytest.mark.parametrize("command", ["eval", "features"])
def test_an_evaluation_or_statistics_that_cannot_be_saved_go_to_a_named_fallback(
    world, tmp_path, monkeypatch, command
):
    from hf_sae import feature_store, runners

    shutil.copytree(world.root / "sae", tmp_path / "sae")
    real_write, real_save, failed = runners.write_json, feature_store.FeatureMetadata.save_pretrained, []

    def full_disk(write):
        def writing(target, *args, **kwargs):
            if "hf_sae-unsaved-" not in str(target):
                failed.append(target)
                raise OSError(errno.ENOSPC, "No space left on device", str(target))
            return write(target, *args, **kwargs)

        return writing

    monkeypatch.setattr(runners, "write_json", full_disk(real_write))
    monkeypatch.setattr(feature_store.FeatureMetadata, "save_pretrained",
                        lambda self, folder: full_disk(lambda f: real_save(self, f))(folder))  # fmt: skip
    monkeypatch.setenv("HF_SAE_DEBUG", "1")
    flags = ["--sae", tmp_path / "sae", "--model_name_or_path", world.root / "lm", "--dataset_name", world.root / "text",
             "--context_size", 32, "--lm_dtype", "float32", "--device", "cpu"]  # fmt: skip
    flags += (
        ["--output_dir", tmp_path / "e", "--eval_tokens", 256]
        if command == "eval"
        else ["--max_tokens", 256, "--overwrite"]
    )
    before = snapshot(tmp_path / "sae")
    with pytest.raises(WriteError, match=r"could not be saved to .*No space left.*saved to (\S+) instead") as info:
        main([command, *map(str, flags)])
    assert failed  # the fault fired
    rescue = Path(re.search(r"saved to (\S+) instead", str(info.value)).group(1))
    if command == "eval":
        assert HOOKPOINT in json.loads((rescue / "eval_results.json").read_text())
        assert not (tmp_path / "e" / "eval_results.json").exists()
    else:
        assert feature_store.FeatureMetadata.load(rescue).metadata  # complete statistics, loadable
        assert snapshot(tmp_path / "sae") == before  # the earlier statistics are intact
    shutil.rmtree(rescue)


def test_a_full_disk_refuses_the_save_and_keeps_what_was_there(tmp_path):
    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "size=256k"):
        pytest.skip("mounting a tmpfs needs root; the simulated ENOSPC tests cover the rest")
    try:
        small = SaeModel(SaeConfig(d_in=24, num_latents=48, k=4))
        from hf_sae import save_saes

        save_saes({HOOKPOINT: small}, disk / "out")
        before = snapshot(disk / "out")
        big = SaeModel(SaeConfig(d_in=256, num_latents=512, k=4))  # 1 MB of weights on a 256 kB disk
        with pytest.raises(WriteError, match=r"needs about 1,05\d,\d{3} bytes, but only [\d,]+ are free"):
            save_saes({HOOKPOINT: big}, disk / "out")
        assert snapshot(disk / "out") == before
        half = SaeModel(SaeConfig(d_in=100, num_latents=240, k=4))  # fits the free space, not with its header and card
        need = sum(t.numel() * t.element_size() for t in half.state_dict().values())
        (disk / "filler").write_bytes(b"0" * (shutil.disk_usage(disk).free - need - 4096))  # one block to spare
        with pytest.raises(WriteError, match=r"writing .*out failed \(.*No space left on device.*\); it needed about "
                           r"[\d,]+ bytes and [\d,]+ are free there. The temporary folder was removed .* intact"):  # fmt: skip
            save_saes({HOOKPOINT: half}, disk / "out")
        assert snapshot(disk / "out") == before  # no temporary folder left, the old SAE intact
    finally:
        _unmount(disk)


def test_a_full_disk_refuses_an_activation_cache_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from hf_sae import activation_cache
    from hf_sae.activation_cache import write_cache

    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "size=256k"):
        pytest.skip("mounting a tmpfs needs root; the simulated ENOSPC tests cover the rest")
    try:
        rows = [({HOOKPOINT: torch.randn(512, 64)}, {"block": np.zeros(512, dtype=np.int64)}) for _ in range(8)]
        with pytest.raises(WriteError, match=r"A 4,096-token cache to .* needs about [\d,]+ bytes, but only"):
            write_cache(iter(rows), disk / "cache", max_tokens=4096)  # ~0.6 MB of bf16 rows on a 256 kB disk
        assert sorted(disk.iterdir()) == []
        # Another writer fills the disk after the space check: pyarrow's real ENOSPC, half-way through the file.
        monkeypatch.setattr(activation_cache, "refuse_if_no_space", lambda *args: None)
        with pytest.raises(WriteError, match=r"Writing the activation cache: writing .*activations.arrow failed .*No space left on device.*bytes free. The "
                           r"temporary folder was removed; nothing at .*cache was changed"):  # fmt: skip
            write_cache(iter(rows), disk / "cache", max_tokens=4096)
        assert sorted(disk.iterdir()) == []
    finally:
        _unmount(disk)


def test_a_checkpoint_that_cannot_be_written_says_what_is_intact(world, tmp_path, monkeypatch):
    from hf_sae import checkpoints

    real_save, written = torch.save, []

    def failing_save(value, path, *args, **kwargs):
        if "checkpoint-8" in str(path) and written:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")  # torch on ENOSPC
        written.append(path)
        return real_save(value, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    with pytest.raises(TrainingError, match=r"Checkpoint checkpoint-8 could not be saved: writing .*checkpoint-8.tmp/"
                       r"\w+.pt failed .*needed about [\d,]+ bytes .*intact checkpoints are \['checkpoint-4'\]"):  # fmt: skip
        train_saes(*run_args(world.root, tmp_path / "run", train_tokens=3072, save_steps=4))
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]


def _train_process(world: World, output_dir: Path, *extra: str) -> subprocess.Popen:
    flags = world.train_flags(output_dir=output_dir, train_tokens=256 * 40, save_steps=5, save_total_limit=20)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "hf_sae.cli", "train", *flags, *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(world, tmp_path_factory) -> Path:
    """The SAE of the killed runs' arguments, trained without interruption."""
    out = tmp_path_factory.mktemp("straight") / "run"
    straight = _train_process(world, out)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    return out


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill -9"])
def test_a_run_killed_mid_way_resumes_to_the_same_weights(world, straight_run, tmp_path, kill):
    run = _train_process(world, tmp_path / "killed")
    deadline = time.monotonic() + 600
    while not (tmp_path / "killed" / "checkpoint-15").is_dir():
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before its third checkpoint"
        time.sleep(0.05)
    run.send_signal(kill)
    assert run.wait(timeout=60) != 0  # the fault fired: the run did not finish
    assert not (tmp_path / "killed" / HOOKPOINT).exists()
    resumed = _train_process(world, tmp_path / "killed", "--resume_from_checkpoint", "latest")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    expected = load_file(straight_run / HOOKPOINT / "model.safetensors")
    got = load_file(tmp_path / "killed" / HOOKPOINT / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_run_resumed_from_an_older_checkpoint_replaces_the_later_ones_and_ends_alike(world, straight_run, tmp_path,
                                                                                       monkeypatch):  # fmt: skip
    monkeypatch.setenv("HF_SAE_DEBUG", "1")
    copy = tmp_path / "run"
    shutil.copytree(straight_run, copy)
    later = copy / "checkpoint-25" / "trainer_state.pt"
    assert later.is_file()  # the condition: checkpoints after the one resumed from exist
    before = later.stat().st_mtime_ns
    flags = world.train_flags(output_dir=copy, train_tokens=256 * 40, save_steps=5, save_total_limit=20)
    assert main(["train", *flags, "--resume_from_checkpoint", str(copy / "checkpoint-20")]) == 0
    assert later.stat().st_mtime_ns != before  # written again by the resumed run
    expected = load_file(straight_run / HOOKPOINT / "model.safetensors")
    got = load_file(copy / HOOKPOINT / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not list(copy.glob("*.tmp")) and not list(copy.glob(".*old*"))
