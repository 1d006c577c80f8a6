"""The argument groups, as transformers' example scripts split them (`ModelArguments`, `DataTrainingArguments`,
`TrainingArguments`), parsed together by one `HfArgumentParser` and shared across the `hf-sae` commands:

    SaeArguments          the SAEs' shape and sparsity, and where they read          train
    ActivationArguments   the LM and how its activations are taken                   train, eval, features
    DataArguments         the text and its token blocks                              train, eval, features
    SaeTrainingArguments  the trainer's schedule, its activation stream and outputs  train

Every field is read by the command that parses it; choices are `Literal`s, so `--help` lists them and a typo fails
before the LM loads. Field values are checked in `check()` before any expensive work starts.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .architectures import ARCHITECTURES, ArchitectureName
from .configuration_sae import SaeConfig
from .errors import ArgumentError
from .hookpoints import INPUT_SUFFIX
from .layout import EVAL_REPORT, FEATURES, looks_like_local_path, missing_path_error
from .lm_forward import LmDtype


def _help(text: str, default=dataclasses.MISSING, **kwargs):
    if "default_factory" in kwargs:
        return field(metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


def _require(condition: bool, flag: str, value, expected: str) -> None:
    if not condition:
        raise ArgumentError(f"--{flag} must be {expected}; got {value!r}.")


class _Checked:
    """Validated on construction, from flags, a file or Python alike: every field's type, choices and finiteness
    (`check_fields`), then the group's ranges and consistency (`check`), before any expensive work."""

    # Flags whose string may also be YAML structure from a config file, which the group parses and checks itself.
    parsed_later: typing.ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Ranges and consistency of this group's values; its types are checked already."""


def check_fields(group) -> None:
    """Each field's value against its annotation: int, float (finite), str, bool, a `Literal`'s choices, a list of
    them, or None where the field is optional."""
    hints = typing.get_type_hints(type(group))
    for name in (f.name for f in dataclasses.fields(group) if f.name not in group.parsed_later):
        hint, value = hints[name], getattr(group, name)
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
        if value is None and type(None) in options:
            continue
        options = [option for option in options if option is not type(None)]
        if not any(_matches(value, option) for option in options):
            raise ArgumentError(f"--{name} must be {' or '.join(map(_describe, options))}; got {value!r}.")


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin is list:
        return f"a list of ({_describe(typing.get_args(hint)[0])})"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


# Bytes per latent per input dimension while training in fp32: weight, gradient and Adam's two moments, for the
# encoder and the decoder.
TRAINING_BYTES_PER_WEIGHT = 4 * 4 * 2


def memory_bytes(device: str | None = None) -> int:
    """The memory of `device` (a GPU's, else this machine's RAM), what an SAE has to fit in."""
    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    import psutil  # an accelerate dependency; portable where os.sysconf is not (Windows)

    return psutil.virtual_memory().total


def check_fits_in_memory(num_latents: int, d_in: int, count: int = 1, device: str | None = None) -> None:
    """Refuse SAEs whose training state would not fit in memory, before trying to allocate it."""
    need, have = count * num_latents * d_in * TRAINING_BYTES_PER_WEIGHT, memory_bytes(device)
    if need > have:
        raise ArgumentError(
            f"--num_latents {num_latents:,} (d_in {d_in}, {count} SAE(s)) needs about {need / 2**30:,.1f} GiB to "
            f"train, more than the {have / 2**30:,.1f} GiB of memory here. Lower --num_latents or "
            "--expansion_factor, or train fewer hookpoints per process (--distribute_hookpoints)."
        )


def check_batch_division(batch_size: int, processes: int, accumulation_steps: int) -> None:
    micro_batches = processes * accumulation_steps
    if batch_size % micro_batches:
        raise ArgumentError(
            f"--batch_size {batch_size} must divide evenly over {processes} process(es) x {accumulation_steps} "
            f"accumulation step(s); pick a multiple of {micro_batches}."
        )


@dataclass
class SaeArguments(_Checked):
    """What SAEs to train: one per hookpoint, all of the same shape and sparsity rule."""

    hookpoints: list[str] = _help(
        "Module paths whose outputs the SAEs read, as `named_modules()` spells them.",
        default_factory=lambda: ["model.layers.15"],
    )
    architecture: ArchitectureName = _help("The SAE architecture.", "topk")
    k: int | None = _help("Active latents per token (the topk and batchtopk family; ignored by the others).", 32)
    matryoshka_group_sizes: list[int] | None = _help(
        "matryoshka_batchtopk: sizes of the nested latent groups, summing to the number of latents "
        "(e.g. `--matryoshka_group_sizes 2304 6912` for 9216 latents).",
        None,
    )
    expansion_factor: float = _help("num_latents = expansion_factor * d_in.", 16)
    num_latents: int | None = _help("Overrides `expansion_factor` when set.", None)
    sparsity_coefficient: float = _help("Sparsity penalty weight (relu and gated: L1; jumprelu: L0).", 1.0)
    sweep: str | None = _help(
        "Several SAE configurations per hookpoint, trained on the same activations, each in its own folder: a YAML "
        "list (a file, inline, or `sweep:` in the config file) of mappings of architecture, k, num_latents, "
        "expansion_factor, sparsity_coefficient, learning_rate, name; unset keys take the flags' values.",
        None,
    )
    transcode: bool = _help(
        "Train transcoders: each one reads its --hookpoints module's input (`<hookpoint>.input`) and predicts the "
        "module's output, e.g. `--hookpoints model.layers.3.mlp` for an MLP.",
        False,
    )
    output_hookpoints: list[str] | None = _help(
        "Train transcoders from each of --hookpoints to the activation named here, in the same order (one each).",
        None,
    )
    skip_connection: bool = _help("Skip transcoders: each prediction adds a learned linear term x @ W_skip.T.", False)
    parsed_later = ("sweep",)

    def check(self) -> None:
        _require(bool(self.hookpoints), "hookpoints", self.hookpoints, "at least one module path")
        outputs = self.output_hookpoints
        _require(
            not (self.transcode and outputs),
            "output_hookpoints",
            outputs,
            "left out with --transcode, which predicts each hookpoint's output from its input; pass one of the two",
        )
        _require(
            outputs is None or len(outputs) == len(self.hookpoints),
            "output_hookpoints",
            outputs,
            f"{len(self.hookpoints)} module path(s), one per --hookpoints entry ({self.hookpoints}), in their order",
        )
        _require(
            not self.skip_connection or self.transcode or bool(outputs),
            "skip_connection",
            self.skip_connection,
            "used with transcoders only (--transcode or --output_hookpoints); an SAE has no skip term",
        )
        _require(
            self.architecture in ARCHITECTURES, "architecture", self.architecture, f"one of {list(ARCHITECTURES)}"
        )
        if ARCHITECTURES[self.architecture].uses_k:
            _require(self.k is not None and self.k >= 1, "k", self.k, f"a positive integer for {self.architecture}")
        _require(self.expansion_factor > 0, "expansion_factor", self.expansion_factor, "a number > 0")
        _require(self.num_latents is None or self.num_latents >= 1, "num_latents", self.num_latents, "positive")
        _require(self.sparsity_coefficient >= 0, "sparsity_coefficient", self.sparsity_coefficient, ">= 0")
        self._check_group_sizes()
        if self.num_latents is not None:  # the smallest activation width: what cannot fit even then is refused now
            check_fits_in_memory(self.num_latents, 1, len(self.hookpoints))

    def _check_group_sizes(self) -> None:
        """What can be checked before the LM gives d_in; SaeConfig checks the sum against the resolved width."""
        sizes, matryoshka = self.matryoshka_group_sizes, self.architecture == "matryoshka_batchtopk"
        _require(
            not sizes or matryoshka,
            "matryoshka_group_sizes",
            sizes,
            f"left unset for architecture {self.architecture} (it applies only to matryoshka_batchtopk)",
        )
        if not matryoshka:
            return
        _require(
            bool(sizes) and all(size >= 1 for size in sizes),
            "matryoshka_group_sizes",
            sizes,
            "positive integers, one per nested group, for matryoshka_batchtopk (e.g. 2304 6912)",
        )
        if self.num_latents:
            _require(
                sum(sizes) == self.num_latents,
                "matryoshka_group_sizes",
                sizes,
                f"sizes summing to --num_latents {self.num_latents} (they sum to {sum(sizes)})",
            )

    def hookpoint_pairs(self) -> dict[str, str | None]:
        """`{input hookpoint: output hookpoint}` of every SAE, the output `None` for an SAE (not a transcoder)."""
        if self.transcode:
            return {hookpoint + INPUT_SUFFIX: hookpoint for hookpoint in self.hookpoints}
        return dict(zip(self.hookpoints, self.output_hookpoints or [None] * len(self.hookpoints)))

    def harvested_hookpoints(self) -> list[str]:
        """Every activation training reads: the SAEs' inputs, then the transcoders' targets."""
        pairs = self.hookpoint_pairs()
        return list(dict.fromkeys([*pairs, *(out for out in pairs.values() if out is not None)]))

    def config(
        self, hookpoint: str, d_in: int, base_model: str | None, output_hookpoint: str | None = None,
        d_out: int | None = None,
    ) -> SaeConfig:  # fmt: skip
        """The `SaeConfig` of the SAE at `hookpoint`, whose activation has width `d_in`; a transcoder predicts
        `output_hookpoint`, of width `d_out`, and reads its input as it is (no b_dec subtracted)."""
        size = {"num_latents": self.num_latents} if self.num_latents else {"expansion_factor": self.expansion_factor}
        transcoder = {}
        if output_hookpoint is not None:
            transcoder = {"output_hookpoint": output_hookpoint, "d_out": d_out, "apply_b_dec_to_input": False,
                          "skip_connection": self.skip_connection}  # fmt: skip
        return SaeConfig(
            d_in=d_in,
            **size,
            architecture=self.architecture,
            k=self.k if ARCHITECTURES[self.architecture].uses_k else None,
            matryoshka_group_sizes=self.matryoshka_group_sizes,
            sparsity_coefficient=self.sparsity_coefficient,
            hookpoint=hookpoint,
            base_model_name_or_path=base_model,
            **transcoder,
        )


@dataclass
class ActivationArguments(_Checked):
    """The LM to study and how its activations are taken; the same for training, evaluation and features."""

    model_name_or_path: str | None = _help(
        "The LM: a Hub id, a local directory, or the built-in `smollm2-135m-instruct`. Default: the built-in model "
        "for training, the SAEs' base model for eval and features.",
        None,
    )
    lm_batch_size: int = _help("Blocks per LM forward.", 8)
    lm_dtype: LmDtype = _help("LM forward precision (autocast): auto picks bf16 where the hardware is faster.", "auto")
    outlier_factor: float | None = _help(
        "Leave out tokens whose activation norm exceeds this times their block's median (none: keep all).", 10.0
    )
    lm_device_map: str | None = _help(
        "Place the LM with transformers' device_map (e.g. `auto`: split over this machine's GPUs) instead of on "
        "the process's device.",
        None,
    )

    def check(self) -> None:
        _require(self.lm_batch_size >= 1, "lm_batch_size", self.lm_batch_size, "a positive integer")
        factor = self.outlier_factor
        _require(factor is None or factor > 0, "outlier_factor", factor, "a number > 0, or none")


@dataclass
class DataArguments(_Checked):
    """Where the text comes from and how it is cut into token blocks."""

    dataset_name: list[str] | None = _help(
        "One or more sources, each a Hub dataset id, a local file (.txt, .jsonl, .json, .parquet, .csv) or folder, "
        "or a folder written by save_to_disk; several are mixed (see --dataset_weights). Default: the built-in "
        "corpus (run `hf-sae prepare-corpus` once).",
        None,
    )
    dataset_weights: list[float] | None = _help(
        "Mixing weights, one per --dataset_name source: documents are drawn from each with this probability "
        "(normalised) until one runs out. Default: every document of every source once (map-style only).",
        None,
    )
    dataset_config_name: str | None = _help("The dataset configuration (subset).", None)
    dataset_split: str = _help("The split to read.", "train")
    text_column: str = _help("The column that holds the documents' text.", "text")
    source_column: str | None = _help(
        "The column naming each document's source, when the text has one: blocks keep it and evaluation reports "
        "per source. Mixed sources without it are named by their --dataset_name.",
        "source",
    )
    streaming: bool = _help("Stream the dataset instead of downloading and tokenizing it up front.", False)
    context_size: int = _help("Tokens per block, BOS included; at most the model's max positions.", 256)
    max_documents: int | None = _help("Read at most this many documents (after shuffling). Default: all.", None)
    shuffle_seed: int | None = _help(
        "Shuffle documents with this seed before packing (it also seeds the mixing); none keeps the stored order.", 0
    )
    stream_shuffle_buffer: int = _help(
        "Documents in the shuffle buffer of a streamed source (IterableDataset.shuffle): large enough to mix a "
        "stream sorted by source, date or length; at least one packing batch.",
        10_000,
    )
    num_proc: int | None = _help("Processes for tokenization (not used when streaming).", None)

    def __post_init__(self):
        if isinstance(self.dataset_name, str):
            self.dataset_name = [self.dataset_name]
        super().__post_init__()
        # One source stays a plain string, as it always was, for the code and the saved arguments that read it.
        if isinstance(self.dataset_name, list | tuple) and len(self.dataset_name) == 1:
            self.dataset_name = self.dataset_name[0]

    @property
    def dataset_names(self) -> list[str | None]:
        """The sources, as a list; `[None]` is the built-in corpus."""
        return list(self.dataset_name) if isinstance(self.dataset_name, list | tuple) else [self.dataset_name]

    def check(self) -> None:
        from .data import PACK_BATCH_DOCUMENTS

        _require(self.context_size >= 2, "context_size", self.context_size, "at least 2 (BOS plus text)")
        docs = self.max_documents
        _require(docs is None or docs >= 1, "max_documents", docs, "a positive integer, or none")
        names, weights = self.dataset_names, self.dataset_weights
        _require(None not in names or len(names) == 1, "dataset_name", names, "paths or Hub ids (none only alone)")
        if weights is not None:
            count = f"{len(names)} number(s), one per --dataset_name source, in the same order"
            _require(len(weights) == len(names), "dataset_weights", weights, count)
            _require(
                all(math.isfinite(w) and w >= 0 for w in weights),
                "dataset_weights",
                weights,
                "finite numbers >= 0 (0 leaves a source out); make the negative ones positive or 0",
            )
            _require(sum(weights) > 0, "dataset_weights", weights, "weights with a positive sum; raise one above 0")
        _require(
            weights is not None or len(names) == 1 or not self.streaming,
            "dataset_weights",
            weights,
            "given to mix several streamed sources, whose sizes are unknown; pass one weight per source",
        )
        _require(
            self.stream_shuffle_buffer >= PACK_BATCH_DOCUMENTS,
            "stream_shuffle_buffer",
            self.stream_shuffle_buffer,
            f"at least one packing batch ({PACK_BATCH_DOCUMENTS} documents), or a smaller buffer barely mixes; "
            "raise it",
        )

    def check_sources(self) -> None:
        """Open every source and check its text column, before the LM loads (the data is cached for later)."""
        from .data import check_sources

        check_sources(self)


@dataclass
class EvalDataArguments(DataArguments):
    """`DataArguments` whose split defaults to `test`, the part of the built-in corpus that training never reads."""

    dataset_split: str = _help("The split to evaluate on (held out from training).", "test")


@dataclass
class SaeTrainingArguments(_Checked):
    """How to train: the schedule, the activation stream, and where results go."""

    train_tokens: int = _help("Tokens to train on (the default: about ten minutes on 2 CPU cores).", 1_000_000)
    batch_size: int = _help("Tokens per optimiser step, over all processes and accumulation steps.", 4096)
    gradient_accumulation_steps: int = _help(
        "Micro-batches per optimiser step: each process computes batch_size / (processes x this) tokens at a time.", 1
    )
    learning_rate: float = _help("Adam learning rate.", 1e-3)
    lr_warmup_fraction: float = _help("Fraction of steps with linear lr warm-up.", 0.02)
    lr_decay_fraction: float = _help("Fraction of final steps decaying lr to 0.", 0.2)
    sparsity_warmup_fraction: float = _help("Fraction of steps over which the sparsity coefficient ramps up.", 0.05)
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", 1.0)
    dead_after_tokens: int | None = _help(
        "A latent is dead after this many tokens without firing (default: a quarter of the run, at most 10M).", None
    )
    b_dec_init: Literal["geometric_median", "mean", "zero"] = _help("How b_dec starts.", "geometric_median")
    normalize_activations: bool = _help(
        "Scale activations to mean norm sqrt(d_in) while training (folded into the saved weights).", True
    )
    shuffle_buffer_tokens: int = _help("Tokens mixed in the shuffling buffer (0: no shuffling).", 65536)
    prefetch_chunks: int | None = _help(
        "LM batches harvested ahead on a background thread, so that harvesting overlaps the SAE step. Default: 2 on "
        "a GPU, 0 on the CPU (where both would compete for the same cores).",
        None,
    )
    activation_cache: str | None = _help(
        "A folder of cached activations (`hf-sae cache`): replayed if it exists, else written first with "
        "--train_tokens tokens. Replay draws a fresh random order every epoch.",
        None,
    )
    epochs: float | None = _help(
        "With --activation_cache: train for this many passes over the cache (replaces --train_tokens).", None
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = _help(
        "SAE step precision (autocast): auto picks bf16 where the hardware multiplies it faster, `no` is fp32; "
        "none leaves it to accelerate's setting.",
        "auto",
    )
    output_dir: str = _help("Where the SAEs, logs and checkpoints go.", "outputs/sae")
    overwrite_output_dir: bool = _help("Replace a previous run in output_dir.", False)
    resume_from_checkpoint: str | None = _help(
        "A checkpoint directory (a bare `checkpoint-N` is also looked for in output_dir), or `latest` for the "
        "newest in output_dir.",
        None,
    )
    save_steps: int = _help("Save a resumable checkpoint every N steps (0: never).", 1000)
    save_total_limit: int = _help("Checkpoints kept; older ones are deleted.", 2)
    logging_steps: int = _help("Log metrics every N steps.", 10)
    report_to: Literal["tensorboard", "wandb", "none"] = _help("Where metrics are logged.", "tensorboard")
    eval_tokens: int = _help("Held-out tokens for the final FVU / L0 (0: skip).", 100_000)
    seed: int = _help("Random seed.", 0)
    num_processes: int = _help(
        "Processes to train with on this machine: `hf-sae train` starts them with torchrun (1: this process).", 1
    )
    ddp_timeout: int = _help("Seconds a process waits at a collective for a peer before the run stops.", 1800)
    distribute_hookpoints: bool = _help(
        "Give each process the SAEs of some hookpoints (round robin) instead of a copy of all: activations go to "
        "their owner, so memory per process is the SAEs it owns. Needs at least as many hookpoints as processes.",
        False,
    )

    def check(self) -> None:
        positive = "a positive integer"
        _require(self.batch_size >= 1, "batch_size", self.batch_size, positive)
        for name in ("gradient_accumulation_steps", "num_processes", "ddp_timeout"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), positive)
        _require(self.train_tokens >= self.batch_size, "train_tokens", self.train_tokens, "at least --batch_size")
        _require(self.logging_steps >= 1, "logging_steps", self.logging_steps, positive)
        _require(self.save_steps >= 0, "save_steps", self.save_steps, "0 (never) or a positive integer")
        _require(self.save_total_limit >= 1, "save_total_limit", self.save_total_limit, positive)
        _require(self.eval_tokens >= 0, "eval_tokens", self.eval_tokens, "0 (skip) or a positive integer")
        _require(self.shuffle_buffer_tokens >= 0, "shuffle_buffer_tokens", self.shuffle_buffer_tokens, ">= 0")
        prefetch = self.prefetch_chunks
        _require(prefetch is None or prefetch >= 0, "prefetch_chunks", prefetch, "0 (off), a positive integer or none")
        _require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            self.learning_rate,
            "a number > 0",
        )
        _require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0 (0 disables)")
        for name in ("lr_warmup_fraction", "lr_decay_fraction", "sparsity_warmup_fraction"):
            value = getattr(self, name)
            _require(0 <= value <= 1, name, value, "a fraction in [0, 1]")
        dead = self.dead_after_tokens
        _require(dead is None or dead >= 1, "dead_after_tokens", dead, "a positive integer, or none")
        epochs = self.epochs
        _require(epochs is None or (math.isfinite(epochs) and epochs > 0), "epochs", epochs, "a number > 0, or none")
        _require(epochs is None or bool(self.activation_cache), "epochs", epochs, "given with --activation_cache")
        schedule = self.lr_warmup_fraction + self.lr_decay_fraction
        _require(schedule <= 1, "lr_decay_fraction", self.lr_decay_fraction, "at most 1 - --lr_warmup_fraction")
        check_batch_division(self.batch_size, self.num_processes, self.gradient_accumulation_steps)

    @property
    def num_steps(self) -> int:
        return max(self.train_tokens // self.batch_size, 1)

    def lr_lambda(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to zero; lengths are fractions so any run length works."""
        warmup = max(int(self.lr_warmup_fraction * self.num_steps), 1)
        decay = int(self.lr_decay_fraction * self.num_steps)
        if step < warmup:
            return (step + 1) / warmup
        if decay and step >= self.num_steps - decay:
            return max(self.num_steps - step, 0) / decay
        return 1.0

    def sparsity_scale(self, step: int) -> float:
        warmup = int(self.sparsity_warmup_fraction * self.num_steps)
        return 1.0 if warmup == 0 else min((step + 1) / warmup, 1.0)

    def dead_window(self) -> int:
        return self.dead_after_tokens or max(min(10_000_000, self.train_tokens // 4), self.batch_size)


TRAIN_GROUPS = (SaeArguments, ActivationArguments, DataArguments, SaeTrainingArguments)


@dataclass
class CacheArguments(_Checked):
    """What `hf-sae cache` writes: activations of some hookpoints, for `hf-sae train --activation_cache`."""

    output_dir: str = _help("The cache folder to write.")
    hookpoints: list[str] = _help(
        "Module paths whose outputs are cached, as `named_modules()` spells them.",
        default_factory=lambda: ["model.layers.15"],
    )
    cache_tokens: int = _help(
        "Tokens to cache (counted tokens: position 0 and special tokens are left out).", 1_000_000
    )
    cache_dtype: Literal["bfloat16", "float16"] = _help("The activations' precision on disk.", "bfloat16")
    overwrite: bool = _help("Replace a cache already at output_dir.", False)

    def check(self) -> None:
        _require(bool(self.hookpoints), "hookpoints", self.hookpoints, "at least one module path")
        _require(self.cache_tokens >= 1, "cache_tokens", self.cache_tokens, "a positive integer")
        exists = Path(self.output_dir).exists()
        _require(not exists or self.overwrite, "output_dir", self.output_dir, "a new folder, or pass --overwrite")


@dataclass
class EvaluationArguments(_Checked):
    """What `hf-sae eval` measures, on how much text, and where the results go."""

    sae: str = _help("A folder with config.json, a training run's folder, or a Hub repo id.")
    output_dir: str = _help("Where eval_results.json and the firing-density plots go.")
    hookpoints: list[str] | None = _help("Evaluate only these SAEs (default: all).", None)
    eval_tokens: int = _help("Tokens to evaluate on, rounded up to whole blocks.", 100_000)
    dense_threshold: float = _help("Latents firing on more than this share of tokens are dense.", 0.1)
    lm_metrics: bool = _help("Measure CE loss and KL (four LM forwards per block).", True)
    save_beside_saes: bool = _help("Also write metrics.json in each SAE folder.", False)
    overwrite: bool = _help("Replace an earlier report in output_dir.", False)
    revision: str | None = _help("Branch, tag or commit of a Hub repo.", None)
    device: str | None = _help("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)

    def check(self) -> None:
        _require(self.eval_tokens >= 1, "eval_tokens", self.eval_tokens, "a positive integer")
        _require(0 < self.dense_threshold <= 1, "dense_threshold", self.dense_threshold, "a fraction in (0, 1]")
        check_sae_source(self.sae)
        report = Path(self.output_dir) / EVAL_REPORT
        _require(
            self.overwrite or not report.exists(),
            "output_dir",
            self.output_dir,
            f"a folder without an earlier report ({report} exists): pass --overwrite to replace it, or choose "
            "another --output_dir",
        )


@dataclass
class FeatureArguments(_Checked):
    """What `hf-sae features` collects, or explains; the text comes from `DataArguments`."""

    sae: str = _help("The SAE's folder (config.json, model.safetensors); features/ goes inside.")
    hookpoint: str | None = _help("Where the SAE reads. Default: its config's.", None)
    max_tokens: int = _help("Tokens to collect statistics over.", 200_000)
    top_n: int = _help("Top activating contexts kept per feature.", 20)
    context_before: int = _help("Tokens shown before each context's peak.", 10)
    context_after: int = _help("Tokens shown after each context's peak.", 5)
    sample_size: int = _help("Contexts sampled per feature for the activation-quantile bins.", 40)
    skip_after_special: bool = _help("Leave the token right after BOS or a chat marker out of the statistics.", True)
    explain: str | None = _help("Instead: list the features that fire on this text.", None)
    top: int = _help("With --explain: features listed per token.", 5)
    device: str | None = _help("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)
    overwrite: bool = _help("Replace the statistics of an earlier run in <sae>/features (its labels are kept).", False)

    def check(self) -> None:
        check_local_sae_folder(self.sae)
        statistics = Path(self.sae).expanduser() / FEATURES
        _require(
            self.overwrite or self.explain is not None or not statistics.is_dir(),
            "sae",
            self.sae,
            f"an SAE folder without earlier statistics ({statistics} exists): pass --overwrite to replace them "
            "(labels are kept), or copy the SAE folder first",
        )
        for name in ("max_tokens", "top_n", "top", "sample_size"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "a positive integer")
        for name in ("context_before", "context_after"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0")


@dataclass
class BrowseArguments(_Checked):
    """What `hf-sae browse` writes."""

    sae: str = _help("The SAE's folder, with features/ (from `hf-sae features`).")
    output_dir: str = _help("Where to write index.html (opens from file://).")
    examples: int = _help("Top contexts shown per feature.", 10)

    def check(self) -> None:
        check_local_sae_folder(self.sae)
        _require(self.examples >= 1, "examples", self.examples, "a positive integer")


@dataclass
class AppArguments(_Checked):
    """What `hf-sae app` serves, or writes as a Hub Space."""

    sae: str = _help("The SAE: a folder with features/ (from `hf-sae features`) or a Hub repo id.")
    hookpoint: str | None = _help("Which SAE, when the folder or repo holds several.", None)
    host: str = _help("The address to serve on (0.0.0.0 to let other machines in).", "127.0.0.1")
    port: int = _help("The port to serve on.", 7860)
    device: str | None = _help("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)
    write_space: str | None = _help("Instead: write a Hub Space folder that runs this app on --sae (a repo id).", None)

    def check(self) -> None:
        _require(0 < self.port < 65536, "port", self.port, "a port number in 1-65535")


@dataclass
class ExplainArguments(_Checked):
    """What `hf-sae explain` explains and scores, and with which LLM."""

    sae: str = _help("The SAE's folder, with features/ (from `hf-sae features`).")
    explainer: str | None = _help(
        "The LLM that explains and scores: a local chat model (built-in name, Hub id or folder; default: the "
        "built-in smollm2-135m-instruct), or with --explainer_endpoint the model name to ask the server for.",
        None,
    )
    explainer_endpoint: str | None = _help(
        "An OpenAI-compatible server to use instead of a local model, e.g. http://127.0.0.1:8000/v1.", None
    )
    api_key: str | None = _help("A key for the endpoint, sent as a Bearer token.", None)
    features: list[int] | None = _help("Only these feature ids (default: every feature that fired).", None)
    max_features: int | None = _help("Explain at most this many features in this run.", None)
    batch_size: int = _help("Features explained per batch; explanations.json is saved after each.", 8)
    explain_examples: int = _help("Activating contexts shown to the explainer.", 10)
    score_examples: int = _help("Held-out activating contexts per score, and as many non-activating ones.", 5)
    fuzzing: bool = _help("Also score by fuzzing (marked tokens), besides detection.", True)
    control: bool = _help("Also score the explanations shuffled across features, as a control.", False)
    overwrite: bool = _help("Explain again the features explained before (default: skip them).", False)
    seed: int = _help("Seed of the context sampling.", 0)
    device: str | None = _help("Where a local explainer runs, e.g. cpu or cuda:0.", None)

    def check(self) -> None:
        for name in ("batch_size", "explain_examples", "score_examples"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "a positive integer")
        if self.max_features is not None:
            _require(self.max_features >= 1, "max_features", self.max_features, "a positive integer")


@dataclass
class PushArguments(_Checked):
    """What `hf-sae push` uploads, and where."""

    sae: str = _help("An SAE folder, or a training output with hookpoint folders.")
    repo_id: str = _help("The Hub repo, e.g. `you/smollm2-saes`; created if needed.")
    private: bool = _help("Create the repo private.", False)
    revision: str | None = _help("The branch to commit to (default: main).", None)
    token: str | None = _help("A write token (default: the logged-in one, or HF_TOKEN).", None)
    commit_message: str | None = _help("The commit message.", None)
    create_pr: bool = _help("Open a pull request instead of committing to the branch.", False)
    datasets: list[str] | None = _help("Hub ids of the datasets the SAEs were trained on, for the card.", None)
    license: str | None = _help("A license id for the card, e.g. apache-2.0.", None)
    tags: list[str] | None = _help("Extra tags for the card.", None)
    space: str | None = _help(
        "Also push a Gradio Space running `hf-sae app` on the repo, e.g. `you/saes-explorer`.", None
    )
    space_hookpoint: str | None = _help("With --space and several SAEs: the one the Space explores.", None)


@dataclass
class PullArguments(_Checked):
    """What `hf-sae pull` downloads."""

    repo_id: str = _help("The Hub repo to download from.")
    hookpoints: list[str] | None = _help("Only these (default: all).", None)
    revision: str | None = _help("Branch, tag or commit.", None)
    token: str | None = _help("A read token for private repos.", None)
    output_dir: str | None = _help("Also save them here (default: the Hub cache only).", None)
    overwrite: bool = _help("Replace SAEs of the same hookpoints already in output_dir.", False)


@dataclass
class ConvertArguments(_Checked):
    """What `hf-sae convert` reads and writes."""

    src: str = _help("SAEs in any known format: a folder, a Hub repo, or a release name (`gemma-scope-2b-pt-res`).")
    dst: str = _help("The output folder: one SAE goes there, several go to one subfolder per hookpoint.")
    to: Literal["saelens", "sparsify", "hf_sae"] = _help("The format to write.", "hf_sae")
    hookpoints: list[str] | None = _help("Only these hookpoints of SRC (default: all).", None)
    width: int | None = _help("Which width, where SRC has several per hookpoint (Gemma Scope).", None)
    l0: float | None = _help("Which L0, where SRC has several per hookpoint (Gemma Scope).", None)
    revision: str | None = _help("Branch, tag or commit of a Hub repo.", None)
    token: str | None = _help("A read token for private repos.", None)
    overwrite: bool = _help("Replace DST if it is not empty.", False)

    def check(self) -> None:
        check_sae_source(self.src, "src")


@dataclass
class CorpusArguments(_Checked):
    """How `hf-sae prepare-corpus` builds the built-in corpus."""

    output_dir: str | None = _help("Where to save it (default: the hf_sae cache).", None)
    test_fraction: float = _help("Share of each source held out as test.", 0.05)
    seed: int = _help("Seed of the train/test split.", 0)
    force: bool = _help("Rebuild even if the corpus is already there.", False)
    sources: list[str] | None = _help("Sources to include (default: all).", None)

    def check(self) -> None:
        _require(0 < self.test_fraction < 1, "test_fraction", self.test_fraction, "a fraction in (0, 1)")


def check_sae_source(source: str, flag: str = "sae") -> None:
    """A mistyped local path is refused here, never sent to the Hub as a repo id."""
    if looks_like_local_path(source) and not Path(source).expanduser().exists():
        raise missing_path_error(source, f"--{flag}")


def check_local_sae_folder(folder: str) -> None:
    check_sae_source(folder)
    if not Path(folder).expanduser().is_dir():
        raise ArgumentError(f"--sae must be a local SAE folder (config.json, model.safetensors); got {folder!r}.")


def group_arguments(groups: tuple[type, ...], **values) -> tuple:
    """Build each dataclass of `groups` from the flat `values` that name its fields (for use from Python, as
    `hf-sae` does from flags); a name no group has is an error."""
    names = {f.name: group for group in groups for f in dataclasses.fields(group)}
    if unknown := sorted(set(values) - set(names)):
        raise ArgumentError(f"Unknown arguments {unknown}; the arguments are {sorted(names)}.")
    return tuple(group(**{k: v for k, v in values.items() if names[k] is group}) for group in groups)


def check_all(*arguments) -> None:
    """Run every group's `check()`, then `check_sources()`: all arguments, and the text's columns, are validated
    before anything expensive."""
    for group in arguments:
        if hasattr(group, "check"):
            group.check()
    for group in arguments:  # the text is read only once every value is known to be valid
        if hasattr(group, "check_sources"):
            group.check_sources()
