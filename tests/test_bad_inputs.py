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
    MissingDependencyError,
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
    save_saes,
)
from hf_sae.activation_cache import ActivationCache
from hf_sae.arguments import TRAIN_GROUPS, group_arguments
from hf_sae.cli import main
from hf_sae.feature_store import load_features
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


# ---- finished work and what is read from disk (helpers of its rows) ------------------------------------------------

FORMATS = REPO / "tests" / "fixtures" / "formats"


def seventy_nine_documents(tmp: Path) -> str:
    """A text of 79 documents: the held-out one (every 50th) is 6 tokens, no block of 32."""
    lines = [json.dumps({"text": " ".join(["w1"] * (5 if i == 49 else 40))}) for i in range(79)]
    (tmp / "short.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp / "short.jsonl")


def damaged_cache(world: World, tmp: Path, damage: Callable[[Path], None], model: str | None = None) -> Path:
    """A cache of the world's model at HOOKPOINT (or written from `model`), then damaged."""
    from hf_sae.activation_cache import write_cache
    from hf_sae.runners import model_identity

    values = torch.arange(600 * 24, dtype=torch.float32).reshape(600, 24) / 100
    write_cache([({HOOKPOINT: values}, {"block": np.arange(600)})], tmp / "cache", max_tokens=600,
                metadata={"model": model or model_identity(str(world.root / "lm"))})  # fmt: skip
    damage(tmp / "cache")
    return tmp / "cache"


def edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | values))


def alter_bytes(path: Path, at: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + 64] = bytes(64 * [0x7F])  # 32 bf16 values of the first record batch
    path.write_bytes(bytes(data))


def relabelled_cache(world: World, tmp: Path) -> Path:
    from hf_sae.runners import model_identity

    return damaged_cache(world, tmp, lambda f: edit_json(f / "cache.json", model=model_identity(str(world.root / "lm"))),
                         model="another/model")  # fmt: skip


def nan_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    weights = load_file(folder / "model.safetensors")
    weights["W_enc"][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors")


def gemma_scope(tmp: Path, change: Callable[[Path], None]) -> Path:
    folder = tmp / "gemma_scope" / "layer_3" / "width_256" / "average_l0_40"
    shutil.copytree(FORMATS / "gemma_scope" / "layer_3" / "width_256" / "average_l0_40", folder)
    change(folder / "params.npz")
    return folder


def claim_two_tebibytes(npz: Path) -> None:
    """W_enc's .npy header in the npz made to claim shape (2^20, 2^19) of float32: 2 TiB, in a 100 kB file."""
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(npz) as source, zipfile.ZipFile(archive, "w") as forged:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "W_enc.npy":
                file = io.BytesIO(data)
                np.lib.format.read_magic(file)
                _, fortran, dtype = np.lib.format.read_array_header_1_0(file)
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                              "fortran_order": fortran, "shape": (2**20, 2**19)})  # fmt: skip
                data = header.getvalue() + data[file.tell() :]
            forged.writestr(entry, data)
    npz.write_bytes(archive.getvalue())


def sparsify_without(tmp: Path, key: str) -> Path:
    folder = Path(shutil.copytree(FORMATS / "sparsify_run" / "layers.3", tmp / "layers.3"))
    config = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({k: v for k, v in config.items() if k != key}))
    return folder


def feature_bomb_repo(world: World, tmp: Path) -> str:
    """A Hub repo whose SAE brings a 2.8 GB statistics table in a small file: one 28 kB label for 100,000 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = tmp / "bomb" / HOOKPOINT / "features"
    shutil.copytree(world.root / "saes" / "model.layers.1", features.parent)
    features.mkdir()
    (features / "metadata.json").write_text(json.dumps({"num_latents": 100_000}))
    labels = pa.DictionaryArray.from_arrays(pa.array(np.zeros(100_000, dtype=np.int32)), pa.array(["x" * 28_000]))
    pq.write_table(pa.table({"auto_label": labels}), features / "stats.parquet")
    assert (features / "stats.parquet").stat().st_size < 30_000  # 100,000 times smaller than the table
    push_saes_to_hub("alice/feature-bomb", tmp / "bomb", token=ALICE)
    return "alice/feature-bomb"


def drop_run_record(checkpoint: Path) -> None:
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    torch.save({key: value for key, value in state.items() if key != "run"}, checkpoint / "trainer_state.pt")


def nan_checkpoint(checkpoint: Path) -> None:
    weights = torch.load(checkpoint / "weights_rank0.pt", weights_only=True)
    weights["saes"][HOOKPOINT]["W_enc"][0, 0] = float("nan")
    torch.save(weights, checkpoint / "weights_rank0.pt")


# ---- silent cases and raw tracebacks (hooks, SaeConfig, arguments, text files; helpers) ----------------------------


def written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def without_module(name: str, call: Callable):
    """`call` as where package `name` is not installed: None in sys.modules fails its import and hides it from the
    checks that look for it (importlib's find_spec, accelerate's list of trackers)."""
    import importlib.util

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, name, None)
        assert importlib.util.find_spec(name) is None  # the condition: the package cannot be found
        return call()


def features_file(folder: Path) -> None:
    """A file where `hf-sae features` puts its statistics folder."""
    shutil.rmtree(folder / "features")
    (folder / "features").write_text("notes")


# ---- paths, links, the explainer and the app (helpers) -------------------------------------------------------------


def convert_foreign(world: World, tmp: Path, from_hub: bool = False):
    """`hf-sae convert` of two SAELens SAEs into the world, one whose `hook_name` is `../victim`, from a folder or a
    Hub repo."""
    from huggingface_hub import HfApi
    from test_convert import foreign_pair

    src = foreign_pair(tmp / "src")
    if from_hub:
        HfApi(token=ALICE).create_repo("alice/foreign", exist_ok=True)
        HfApi(token=ALICE).upload_folder(repo_id="alice/foreign", folder_path=str(src))
    src = "alice/foreign" if from_hub else str(src)
    return main(["convert", src, str(world.root / "converted"), "--to", "hf_sae"])


def push_with_link(world: World, tmp: Path):
    """The world's SAEs pushed with a symbolic link to a token in one SAE folder."""
    shutil.copytree(world.root / "saes", tmp / "saes")
    (tmp / "token").write_text("hf_the_users_real_token")
    (tmp / "saes" / "model.layers.0" / "notes.txt").symlink_to(tmp / "token")
    return push_saes_to_hub("alice/leak", tmp / "saes", token=ALICE)


def damaged_explanations(world: World, tmp: Path) -> Path:
    """A copy of the world's SAE with the feature metadata `hf-sae features` writes, its explanations.json cut short."""
    folder = copy_sae(world, tmp, lambda f: shutil.rmtree(f / "features"))
    main(["features", "--sae", str(folder), "--model_name_or_path", str(world.root / "lm"), "--dataset_name",
          str(world.root / "text"), "--context_size", "32", "--max_tokens", "512", "--lm_dtype", "float32"])  # fmt: skip
    (folder / "features" / "explanations.json").write_text('{"features": {"3": {"explan')
    return folder


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
    Row("convert bad format", lambda w, t: main(["convert", yaml_file(t, f"src: {w.root}/sae\ndst: {t}/c\nto: neuronpad\n")]), ArgumentError, r"--to must be one of \['saelens'"),
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
    Row("hub no top config", lambda w, t: SaeModel.from_pretrained("alice/saes"), ArgumentError, r"No config.json in repo 'alice/saes' at its top"),
    Row("hub endpoint down, load", lambda w, t: down_endpoint(w, lambda: load_saes("alice/saes")), HubError, r"endpoint http://127.0.0.1:9 could not be reached .*HF_ENDPOINT"),
    Row("hub endpoint down, from_pretrained", lambda w, t: down_endpoint(w, lambda: SaeModel.from_pretrained("alice/saes", subfolder="model.layers.0")), HubError, r"http://127.0.0.1:9 could not be reached"),
    Row("hub endpoint down, push", lambda w, t: down_endpoint(w, lambda: push_saes_to_hub("alice/more", w.root / "saes", token=ALICE)), HubError, r"Pushing to 'alice/more' failed: the Hub endpoint http://127.0.0.1:9"),
    Row("hub read-only token", lambda w, t: push_saes_to_hub("alice/more", w.root / "saes", token="hf_alice_read"), HubError, r"read-only"),
    Row("hub pull bad repo id", cli("pull", "--repo_id", "not a repo"), HubError, r"neither a local folder nor a Hub repo id"),
    Row("hub pull over existing SAEs", cli("pull", "--repo_id", "alice/saes", "--output_dir", "{root}/saes"), ArgumentError, r"already holds SAEs for \['model.layers.0'\]; they were left as they are"),
    # ---- finished work, caches against their header, bounded tables, finite weights, checkpoints -------------------
    Row("held-out split without a block", lambda w, t: T(w, dataset_name=seventy_nine_documents(t), eval_tokens=256), ArgumentError, r"held-out text .*\(train\[every 50th document\]: 1 document\(s\), 6 token\(s\) with EOS\) makes no full block of --context_size 32, so the report would fail after training\. Pass --context_size 7 or less .*--eval_tokens 0"),
    Row("cache dtype relabelled", lambda w, t: T(w, activation_cache=damaged_cache(w, t, lambda f: edit_json(f / "cache.json", dtype="float16"))), DataError, r"cache.json says dtype 'float16', but activations.arrow was written with 'bfloat16'"),
    Row("cache of another model relabelled", lambda w, t: T(w, activation_cache=relabelled_cache(w, t)), DataError, r"cache.json says model '.*lm', but activations.arrow was written with 'another/model'"),
    Row("cache values altered", lambda w, t: T(w, activation_cache=damaged_cache(w, t, lambda f: alter_bytes(f / "activations.arrow"))), DataError, r"record batch 0 \(rows 0 to 599\) does not match its checksum: its values were altered"),
    Row("cache truncated", lambda w, t: T(w, activation_cache=damaged_cache(w, t, lambda f: truncate(f / "activations.arrow"))), DataError, r"activations.arrow cannot be read .*write it again with `hf-sae cache"),
    Row("cache.json without its keys", lambda w, t: T(w, activation_cache=damaged_cache(w, t, lambda f: (f / "cache.json").write_text('{"format_version": 2}'))), DataError, r"cache.json says dtype None, but activations.arrow was written with 'bfloat16'"),
    Row("features on a run folder", cli("features", "--sae", "{root}/run", "--model_name_or_path", "{root}/lm", "--dataset_name", "{root}/text"), ArgumentError, r"--sae \S+run is a folder of SAE folders \(model.layers.1\); statistics saved there would be read by no loader\. .*--sae \S+run/model.layers.1"),
    Row("feature table bomb from the Hub", lambda w, t: load_saes(feature_bomb_repo(w, t))[HOOKPOINT].features.stats, FeatureMetadataError, r"stats.parquet was refused: its strings decode to 2,800,\d{3},\d{3} bytes in memory, from a file of [\d,]+ bytes"),
    Row("nan weights load", lambda w, t: SaeModel.from_pretrained(copy_sae(w, t, nan_weights)), WeightsError, r"sae holds non-finite weights: 'W_enc' \(1 of 1,152 values NaN or inf\)"),
    Row("nan weights load_saes", lambda w, t: load_saes(copy_sae(w, t, nan_weights)), WeightsError, r"holds non-finite weights: 'W_enc'"),
    Row("nan weights convert", lambda w, t: main(["convert", str(copy_sae(w, t, nan_weights)), str(t / "out")]), WeightsError, r"holds non-finite weights: 'W_enc'"),
    Row("npz header claims 2 TiB", lambda w, t: SaeModel.from_pretrained(gemma_scope(t, claim_two_tebibytes)), WeightsError, r"entry 'W_enc.npy' claims shape \(1048576, 524288\) of float32 \(2,199,023,255,552 bytes\) but holds [\d,]+ bytes"),
    Row("npz truncated", lambda w, t: SaeModel.from_pretrained(gemma_scope(t, truncate)), WeightsError, r"params.npz is not a readable npz file of arrays \(.*\)\. Download it again"),
    Row("foreign config missing key", lambda w, t: SaeModel.from_pretrained(sparsify_without(t, "d_in")), FileFormatError, r"layers.3: its sparsify files \(cfg.json\) lack the setting 'd_in'"),
    Row("resume without its run record", lambda w, t: main(["train", *w.train_flags(output_dir=damaged_copy(w, t, drop_run_record), resume_from_checkpoint="latest", k=8)]), TrainingError, r"checkpoint-8/trainer_state.pt lacks the record of its run \('run'\)"),
    Row("resume NaN weights", lambda w, t: resume_copy(w, damaged_copy(w, t, nan_checkpoint)), TrainingError, r"checkpoint-8 holds non-finite weights \('model.layers.1.W_enc' \(1 of 2,304 values NaN or inf\)\); .*the newest intact one is \S+checkpoint-4: resume"),
    # ---- silent cases and raw tracebacks (hooks, SaeConfig, arguments, text files) ---------------------------------
    Row("hooks misspelt key", lambda w, t: SaeHooks(w.hooks.model, {"model.layers.99": SaeModel(SaeConfig(d_in=24, num_latents=48, k=4, hookpoint=HOOKPOINT))}), HookpointError, r"key 'model.layers.99', which is not a module of LlamaForCausalLM; closest are \[.*'model.layers.1'.*config says 'model.layers.1'"),
    Row("hooks at the rotary embedding", lambda w, t: SaeHooks(w.hooks.model, {"model.rotary_emb": SaeModel(SaeConfig(d_in=6, num_latents=48, k=4))}), HookpointError, r"acts on `model.rotary_emb`, which is a rotary embedding .*cos / sin tables"),
    Row("steer an empty slice", lambda w, t: steer(w, 3, positions=slice(2, 2)), SteeringError, r"`positions=slice\(2, 2, None\)` selects no token"),
    Row("config flag a string", lambda w, t: SaeConfig(d_in=24, num_latents=48, k=4, apply_b_dec_to_input="no"), SaeConfigError, r"`apply_b_dec_to_input` must be True or False; got 'no'"),
    Row("config hookpoint an int", lambda w, t: SaeConfig(d_in=24, num_latents=48, k=4, hookpoint=123), SaeConfigError, r"`hookpoint` must be a string; got 123"),
    Row("config hookpoint a path", lambda w, t: SaeConfig(d_in=24, num_latents=48, k=4, hookpoint="../victim"), HookpointError, r"SaeConfig `hookpoint` '../victim' must be a folder name"),
    Row("train hookpoint twice", lambda w, t: main(["train", *w.train_flags(), "--hookpoints", HOOKPOINT, HOOKPOINT]), ArgumentError, r"--hookpoints names \['model.layers.1'\] more than once"),
    Row("cache hookpoint twice", cli("cache", "--model_name_or_path", "{root}/lm", "--hookpoints", HOOKPOINT, HOOKPOINT, "--output_dir", "{tmp}/c"), ArgumentError, r"--hookpoints names \['model.layers.1'\] more than once"),
    Row("report_to wandb without wandb", lambda w, t: without_module("wandb", lambda: T(w, report_to="wandb")), MissingDependencyError, r"--report_to wandb needs the `wandb` package, which is not installed.*`pip install wandb`, or pass --report_to none"),
    Row("train output_dir a file", lambda w, t: T(w, output_dir=w.root / "sae" / "config.json"), ArgumentError, r"--output_dir: \S+sae/config.json must be a folder to write into, but it is a file"),
    Row("eval output_dir under a file", cli("eval", "--sae", "{root}/sae", "--output_dir", "{root}/sae/config.json/eval"), ArgumentError, r"--output_dir: \S+ must be a folder to write into, but it lies under \S+sae/config.json, which is a file"),
    Row("cache output_dir a file", cli("cache", "--model_name_or_path", "{root}/lm", "--output_dir", "{root}/sae/config.json", "--overwrite"), ArgumentError, r"--output_dir: \S+config.json must be a folder to write into, but it is a file"),
    Row("features folder a file", lambda w, t: main(["features", "--sae", str(copy_sae(w, t, features_file)), "--overwrite"]), ArgumentError, r"--sae: \S+sae/features must be a folder to write into, but it is a file"),
    Row("empty text file", lambda w, t: T(w, dataset_name=written(t / "empty.txt", "")), DataError, r"The dataset file \S+empty.txt is empty; expected documents in it"),
    Row("integer text column", lambda w, t: T(w, dataset_name=written(t / "ids.jsonl", '{"text": 7}\n{"text": 8}\n')), DataError, r"The text column 'text' of '\S+ids.jsonl' holds int64 values, not text"),
    # ---- nothing outside the folder named, nothing leaves, the explainer and the app ---------------------------------
    Row("convert foreign hook ../victim", lambda w, t: convert_foreign(w, t), HookpointError, r"Hook '\.\./victim' must be a folder name: .*without '/'"),
    Row("convert foreign hook ../victim from the Hub", lambda w, t: convert_foreign(w, t, from_hub=True), HookpointError, r"Hook '\.\./victim' must be a folder name"),
    Row("save_saes hookpoint ../victim", lambda w, t: save_saes({"../victim": SaeModel(SaeConfig(d_in=24, num_latents=48, k=4))}, w.root / "saes"), HookpointError, r"Hookpoint '\.\./victim' must be a folder name"),
    Row("sweep named checkpoint-99", lambda w, t: T(w, sweep="[{k: 4, name: checkpoint-99}]"), ArgumentError, r"`name` 'checkpoint-99' clashes with 'checkpoint-\*', which hf_sae writes in the same folder"),
    Row("sweep named metrics.json", lambda w, t: T(w, sweep="[{k: 4}, {k: 8, name: metrics.json}]"), ArgumentError, r"entry 1 .*`name` 'metrics.json' clashes with 'metrics.json'"),
    Row("sweep name a path", lambda w, t: T(w, sweep="[{k: 4, name: ../run}]"), ArgumentError, r"`name` '\.\./run' must be a folder name"),
    Row("sweep file missing", lambda w, t: T(w, sweep=f"{t}/sweep.yaml"), ArgumentError, r"--sweep '\S+sweep.yaml' is neither a readable YAML file \(No such file"),
    Row("push a symbolic link", lambda w, t: push_with_link(w, t), HubError, r"Pushing \S+saes refused, nothing was uploaded: it holds symbolic links \(\S+notes.txt\)"),
    Row("explain damaged explanations.json", lambda w, t: main(["explain", "--sae", str(damaged_explanations(w, t)), "--explainer_endpoint", "http://127.0.0.1:9"]), FeatureMetadataError, r"explanations.json is not valid JSON \(.*\): it is damaged"),
    Row("browse damaged explanations.json", lambda w, t: main(["browse", "--sae", str(damaged_explanations(w, t)), "--output_dir", f"{t}/b"]), FeatureMetadataError, r"explanations.json is not valid JSON"),
    Row("app write_space a file", cli("app", "--sae", "alice/saes", "--write_space", "{root}/sae/config.json"), ArgumentError, r"Expected a new or empty folder for the Space; \S+config.json is a file"),
    Row("push space without write access", cli("push", "--sae", "{root}/saes", "--repo_id", "alice/pushed", "--token", ALICE, "--space", "bob/explorer", "--space_hookpoint", "model.layers.0"), HubError, r"Pushing the Space 'bob/explorer' failed: HTTP 403 .*the SAE repo alice/pushed is as this step found it"),
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


# ---- two writers of one folder ------------------------------------------------------------------------------------

GATED = """
import sys, time
from pathlib import Path
import hf_sae.runners as runners
from hf_sae.cli import main

gate, name = Path(sys.argv[1]), sys.argv[2]
real = getattr(runners, name)

def gated(*args, **kwargs):  # inside the command's claim: the folder is held until the test opens the gate
    (gate / "claimed").touch()
    while not (gate / "go").exists():
        time.sleep(0.02)
    return real(*args, **kwargs)

setattr(runners, name, gated)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("command", ["cache", "train", "features"])
def test_a_second_writer_of_a_folder_is_refused_while_the_first_writes(world, tmp_path, command):
    shutil.copytree(world.root / "sae", tmp_path / "sae")
    lm_and_text = ["--model_name_or_path", world.root / "lm", "--dataset_name", world.root / "text", "--context_size",
                   32, "--lm_dtype", "float32"]  # fmt: skip
    argv, gated, folder = {
        "cache": (["cache", *lm_and_text, "--hookpoints", HOOKPOINT, "--cache_tokens", 500, "--output_dir",
                   tmp_path / "cache"], "load_lm", tmp_path / "cache"),
        "train": (["train", *world.train_flags(output_dir=tmp_path / "run")], "_train_and_save", tmp_path / "run"),
        "features": (["features", *lm_and_text, "--sae", tmp_path / "sae", "--max_tokens", 256, "--overwrite",
                      "--device", "cpu"], "load_sae_and_lm", tmp_path / "sae" / "features"),
    }[command]  # fmt: skip
    argv = [str(a) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HF_SAE_DEBUG", None)
    first = subprocess.Popen([sys.executable, "-c", GATED, str(tmp_path), gated, *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:  # the first writer waits for a gate: never leave it waiting if an assertion fails
        deadline = time.monotonic() + 300
        while not (tmp_path / "claimed").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.05)
        before = snapshot(folder) if folder.exists() else None
        second = subprocess.run([sys.executable, "-m", "hf_sae.cli", *argv], env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert first.poll() is None  # both ran at once: the first still holds the folder
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert f"{folder} is being written by another process (pid {first.pid} on" in second.stderr
        assert (snapshot(folder) if folder.exists() else None) == before  # the second changed nothing
        (tmp_path / "go").touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
    if command == "cache":
        assert ActivationCache(folder).tokens == 500
    elif command == "train":
        assert SaeModel.from_pretrained(folder / HOOKPOINT).config.num_latents == 96
    else:
        assert len(load_features(tmp_path / "sae")) == 48
    assert not list(folder.parent.glob(f".{folder.name}.hf_sae-lock"))  # the claim ended with its writer
