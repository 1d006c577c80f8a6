"""The groups of `hf-sae train`, as transformers' example scripts split them (`ModelArguments`,
`DataTrainingArguments`, `TrainingArguments`); `cache`, `eval` and `features` share the LM's and the text's:

    SaeArguments             the SAEs' shape and sparsity, where they read, and their `SaeConfig`
    LanguageModelArguments   the LM and how its activations are read (`reading`: the `LmReading` of a run)
    DataArguments            the text and its token blocks (`EvalDataArguments`: its held-out split)
    SaeTrainingArguments     the trainer's schedule, its activation stream and outputs
    check_batch_division     the one rule for splitting a batch over processes and accumulation steps
"""

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from accelerate.utils import is_tensorboard_available, is_wandb_available

from ..activation_cache import MAX_EPOCHS
from ..architectures import ARCHITECTURES, ArchitectureName
from ..configuration_clt import CLT_ARCHITECTURES, CltConfig
from ..configuration_sae import SaeConfig
from ..data import PACK_BATCH_DOCUMENTS
from ..errors import ArgumentError, MissingDependencyError
from ..fields import Checked, flag, require, require_distinct, require_folder
from ..hookpoints import INPUT_SUFFIX
from ..lm_forward import LmReading
from ..memory import check_fits_in_memory
from ..precision import LmDtype, MixedPrecision, default_device, resolve_lm_dtype

EVAL_FRACTION, EVAL_TOKENS_CAP = 0.1, 100_000  # the default held-out report: a tenth of the training budget, capped
# Without --train_tokens: an SAE run reads DEFAULT_RUN_TOKENS tokens of text once and trains DEFAULT_RUN_EPOCHS passes
# over their cached activations, which beat one pass over fresh text at the same cost (docs/training.md, "Spending
# the default run's budget"); a run that cannot cache (a transcoder, or one given a cache) reads DEFAULT_TRAIN_TOKENS.
DEFAULT_RUN_TOKENS, DEFAULT_RUN_EPOCHS, DEFAULT_TRAIN_TOKENS = 700_000, 6, 1_000_000
# The default run trains at a higher rate than other runs: over its six epochs of 700,000 tokens, 2e-3 gave a lower
# held-out FVU and more features with a clear pattern than 1e-3, with two seeds each (docs/training.md).
DEFAULT_LEARNING_RATE, DEFAULT_RUN_LEARNING_RATE = 1e-3, 2e-3
CLT_LAYER_PREFIX = "model.layers."  # a cross-layer transcoder's sites: the Llama family's decoder layers

# Whether each --report_to tracker's package is installed; accelerate would skip a missing one without a word.
TRACKER_INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}


def check_batch_division(batch_size: int, processes: int, accumulation_steps: int) -> None:
    """The one rule for splitting a batch: over the processes (as asked, or as launched), then the accumulation."""
    micro_batches = processes * accumulation_steps
    if batch_size % micro_batches:
        raise ArgumentError(
            f"--batch_size {batch_size} must divide evenly over {processes} process(es) x {accumulation_steps} "
            f"accumulation step(s); pick a multiple of {micro_batches}."
        )


def check_latents_fit(sae_args: "SaeArguments", args: "SaeTrainingArguments") -> None:
    """The SAEs' memory at the smallest activation width (1), before anything loads: what cannot fit even then is
    refused now. Each process holds 1 / --shard_features of every SAE's latents (a cross-layer transcoder's size is
    checked once the LM's config gives its layers and width)."""
    if not sae_args.clt and sae_args.num_latents is not None:
        check_fits_in_memory(sae_args.num_latents, 1, len(sae_args.hookpoints), shards=args.shard_features)


@dataclass
class SaeArguments(Checked):
    """What SAEs to train: one per hookpoint, all of the same shape and sparsity rule."""

    _argument_group_name = "SAEs"

    hookpoints: list[str] = flag(
        "Module paths whose outputs the SAEs read, as `named_modules()` spells them.",
        default_factory=lambda: ["model.layers.15"],
    )
    architecture: ArchitectureName = flag("The SAE architecture.", "topk")
    k: int | None = flag("Active latents per token (the topk and batchtopk family; ignored by the others).", 32)
    matryoshka_group_sizes: list[int] | None = flag(
        "matryoshka_batchtopk: sizes of the nested latent groups, summing to the number of latents "
        "(e.g. `--matryoshka_group_sizes 2304 6912` for 9216 latents).",
        None,
    )
    expansion_factor: float = flag("num_latents = expansion_factor * d_in.", 16)
    num_latents: int | None = flag("Overrides `expansion_factor` when set.", None)
    sparsity_coefficient: float = flag("Sparsity penalty weight (relu and gated: L1; jumprelu: L0).", 1.0)
    sweep: str | None = flag(
        "Several SAE configurations per hookpoint, trained on the same activations, each in its own folder: a YAML "
        "list (a file, inline, or `sweep:` in the config file) of mappings of architecture, k, num_latents, "
        "expansion_factor, sparsity_coefficient, learning_rate, name; unset keys take the flags' values.",
        None,
    )
    transcode: bool = flag(
        "Train transcoders: each one reads its --hookpoints module's input (`<hookpoint>.input`) and predicts the "
        "module's output, e.g. `--hookpoints model.layers.3.mlp` for an MLP.",
        False,
    )
    output_hookpoints: list[str] | None = flag(
        "Train transcoders from each of --hookpoints to the activation named here, in the same order (one each).",
        None,
    )
    skip_connection: bool = flag("Skip transcoders: each prediction adds a learned linear term x @ W_skip.T.", False)
    clt: bool = flag(
        "Train one cross-layer transcoder over --clt_layers instead of one SAE per hookpoint (Ameisen et al. 2025): "
        "layer l's encoder reads `model.layers.<l>.mlp.input` and its latents predict the MLP output "
        "`model.layers.<l'>.mlp` of every spanned layer l' >= l. --architecture (jumprelu, topk or batchtopk), --k, "
        "--num_latents or --expansion_factor (per layer) and --sparsity_coefficient apply; --hookpoints is not read.",
        False,
    )
    clt_layers: str = flag(
        "The layers a cross-layer transcoder spans: `all` (every layer of the LM, what attribution needs), a range "
        "`0-5`, or a list `0,2,4`.",
        "all",
    )
    clt_sparsity_scale: float = flag("A jumprelu cross-layer transcoder's c in its penalty tanh(c z ||W_dec||).", 1.0)
    clt_pre_act_coefficient: float = flag(
        "A jumprelu cross-layer transcoder's pre-activation penalty, which pulls dead latents to their threshold.", 0.0
    )
    parsed_later = ("sweep",)

    def check(self) -> None:
        require(bool(self.hookpoints), "hookpoints", self.hookpoints, "at least one module path")
        require_distinct("hookpoints", self.hookpoints)
        outputs = self.output_hookpoints
        expected = "left out with --transcode, which predicts each hookpoint's output from its input"
        require(not (self.transcode and outputs), "output_hookpoints", outputs, expected + "; pass one of the two")
        expected = f"{len(self.hookpoints)} module path(s), one per --hookpoints entry ({self.hookpoints})"
        require(outputs is None or len(outputs) == len(self.hookpoints), "output_hookpoints", outputs,
                expected + ", in their order")  # fmt: skip
        expected = "used with transcoders only (--transcode or --output_hookpoints); an SAE has no skip term"
        require(not self.skip_connection or self.transcode or bool(outputs), "skip_connection", True, expected)
        require(self.architecture in ARCHITECTURES, "architecture", self.architecture, f"one of {list(ARCHITECTURES)}")
        if ARCHITECTURES[self.architecture].uses_k:
            require(self.k is not None and self.k >= 1, "k", self.k, f"a positive integer for {self.architecture}")
        require(self.expansion_factor > 0, "expansion_factor", self.expansion_factor, "a number > 0")
        require(self.num_latents is None or self.num_latents >= 1, "num_latents", self.num_latents, "positive")
        require(self.sparsity_coefficient >= 0, "sparsity_coefficient", self.sparsity_coefficient, ">= 0")
        self._check_group_sizes()
        if self.clt:
            self._check_clt()

    def _check_clt(self) -> None:
        """What a cross-layer transcoder takes, before the LM's config gives its layer count and width."""
        expected = f"one of {list(CLT_ARCHITECTURES)} with --clt"
        require(self.architecture in CLT_ARCHITECTURES, "architecture", self.architecture, expected)
        for name in ("transcode", "skip_connection"):
            require(not getattr(self, name), name, True, "left false with --clt, which reads every MLP's input itself")
        for name in ("output_hookpoints", "sweep", "matryoshka_group_sizes"):
            require(not getattr(self, name), name, getattr(self, name), "left unset with --clt")
        k, latents = self.k, self.num_latents
        require(latents is None or k is None or k <= latents, "k", k, f"at most --num_latents {latents}")
        self.clt_layer_indices(None)  # the syntax, now; the range once the LM's layer count is known
        for name in ("clt_sparsity_scale", "clt_pre_act_coefficient"):
            require(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, getattr(self, name), ">= 0")

    def clt_layer_indices(self, num_layers: int | None) -> list[int]:
        """The layers `--clt_layers` names, in increasing order, each checked against `num_layers` when given."""
        text, expected = (
            str(self.clt_layers).replace(" ", ""),
            "`all`, a range such as `0-5`, or a list such as `0,2,4`",
        )
        if text == "all":
            return list(range(num_layers or 0))
        try:
            layers = []
            for part in text.split(","):
                first, _, last = part.partition("-")
                layers += range(int(first), int(last or first) + 1)
        except ValueError:
            raise ArgumentError(f"--clt_layers must be {expected}; got {self.clt_layers!r}.") from None
        require(bool(layers), "clt_layers", self.clt_layers, expected + " naming at least one layer")
        require_distinct("clt_layers", layers)
        if num_layers is not None:
            outside = [layer for layer in layers if not 0 <= layer < num_layers]
            require(not outside, "clt_layers", self.clt_layers, f"layers of the LM's {num_layers} (0 to "
                    f"{num_layers - 1}); {outside} are outside it")  # fmt: skip
        return sorted(layers)

    def clt_config(self, layers: list[int], d_in: int, d_out: int, base_model: str | None) -> CltConfig:
        """The `CltConfig` of a cross-layer transcoder over the LM's `layers`, whose MLPs read and write width `d_in`
        and `d_out`."""
        size = {"num_latents": self.num_latents} if self.num_latents else {"expansion_factor": self.expansion_factor}
        return CltConfig(
            n_layers=len(layers), d_in=d_in, d_out=d_out, **size, architecture=self.architecture,
            k=self.k if self.architecture != "jumprelu" else None, sparsity_coefficient=self.sparsity_coefficient,
            sparsity_scale=self.clt_sparsity_scale, pre_act_coefficient=self.clt_pre_act_coefficient,
            hookpoints=[f"{CLT_LAYER_PREFIX}{layer}.mlp{INPUT_SUFFIX}" for layer in layers],
            output_hookpoints=[f"{CLT_LAYER_PREFIX}{layer}.mlp" for layer in layers],
            base_model_name_or_path=base_model,
        )  # fmt: skip

    def _check_group_sizes(self) -> None:
        """What can be checked before the LM gives d_in; SaeConfig checks the sum against the resolved width."""
        flag, sizes = "matryoshka_group_sizes", self.matryoshka_group_sizes
        matryoshka = self.architecture == "matryoshka_batchtopk"
        expected = f"left unset for architecture {self.architecture} (it applies only to matryoshka_batchtopk)"
        require(not sizes or matryoshka, flag, sizes, expected)
        if not matryoshka:
            return
        expected = "positive integers, one per nested group, for matryoshka_batchtopk (e.g. 2304 6912)"
        require(bool(sizes) and all(size >= 1 for size in sizes), flag, sizes, expected)
        expected = f"sizes summing to --num_latents {self.num_latents} (they sum to {sum(sizes)})"
        require(not self.num_latents or sum(sizes) == self.num_latents, flag, sizes, expected)

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
class LanguageModelArguments(Checked):
    """The LM to study and how its activations are read; the same for training, caching, evaluation and features."""

    _argument_group_name = "Language model"

    model_name_or_path: str | None = flag(
        "The LM: a Hub id, a local directory, or the built-in `smollm2-135m-instruct`. Default: the built-in model "
        "for training, the SAEs' base model for eval and features.",
        None,
    )
    lm_batch_size: int = flag("Blocks per LM forward.", 8)
    lm_dtype: LmDtype = flag("LM forward precision (autocast): auto picks bf16 where the hardware is faster.", "auto")
    outlier_factor: float | None = flag(
        "Leave out tokens whose activation norm exceeds this times their block's median (none: keep all).", 10.0
    )
    lm_device_map: str | None = flag(
        "Place the LM with transformers' device_map (e.g. `auto`: split over this machine's GPUs) instead of on "
        "the process's device.",
        None,
    )

    def check(self) -> None:
        require(self.lm_batch_size >= 1, "lm_batch_size", self.lm_batch_size, "a positive integer")
        factor = self.outlier_factor
        require(factor is None or factor > 0, "outlier_factor", factor, "a number > 0, or none")

    def reading(self, device: torch.device | str | None = None) -> LmReading:
        """How to read the LM on `device` (default: the GPU where there is one): the one adapter from these
        arguments to what the harvest, the cache, evaluation and feature collection take."""
        device = torch.device(device or default_device())
        dtype = resolve_lm_dtype(self.lm_dtype, device)
        return LmReading(device, self.lm_batch_size, autocast_dtype=dtype, outlier_factor=self.outlier_factor)


ActivationArguments = LanguageModelArguments  # its former name, kept for code that imports it


@dataclass
class DataArguments(Checked):
    """Where the text comes from and how it is cut into token blocks."""

    _argument_group_name = "Data"

    dataset_name: list[str] | None = flag(
        "One or more sources, each a Hub dataset id, a local file (.txt, .jsonl, .json, .parquet, .csv) or folder, "
        "or a folder written by save_to_disk; several are mixed (see --dataset_weights). Default: the built-in "
        "corpus (run `hf-sae prepare-corpus` once).",
        None,
    )
    dataset_weights: list[float] | None = flag(
        "Mixing weights, one per --dataset_name source: documents are drawn from each with this probability "
        "(normalised) until one runs out. Default: every document of every source once (map-style only).",
        None,
    )
    dataset_config_name: str | None = flag("The dataset configuration (subset).", None)
    dataset_split: str = flag("The split to read.", "train")
    text_column: str = flag("The column that holds the documents' text.", "text")
    source_column: str | None = flag(
        "The column naming each document's source, when the text has one: blocks keep it and evaluation reports "
        "per source. Mixed sources without it are named by their --dataset_name.",
        "source",
    )
    streaming: bool = flag("Stream the dataset instead of downloading and tokenizing it up front.", False)
    context_size: int = flag("Tokens per block, BOS included; at most the model's max positions.", 256)
    max_documents: int | None = flag("Read at most this many documents (after shuffling). Default: all.", None)
    shuffle_seed: int | None = flag(
        "Shuffle documents with this seed before packing (it also seeds the mixing); none keeps the stored order.", 0
    )
    stream_shuffle_buffer: int = flag(
        "Documents in the shuffle buffer of a streamed source (IterableDataset.shuffle): large enough to mix a "
        "stream sorted by source, date or length; at least one packing batch.",
        10_000,
    )
    num_proc: int | None = flag("Processes for tokenization (not used when streaming).", None)

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
        require(self.context_size >= 2, "context_size", self.context_size, "at least 2 (BOS plus text)")
        docs = self.max_documents
        require(docs is None or docs >= 1, "max_documents", docs, "a positive integer, or none")
        names, weights = self.dataset_names, self.dataset_weights
        require(None not in names or len(names) == 1, "dataset_name", names, "paths or Hub ids (none only alone)")
        if weights is not None:
            count = f"{len(names)} number(s), one per --dataset_name source, in the same order"
            require(len(weights) == len(names), "dataset_weights", weights, count)
            expected = "finite numbers >= 0 (0 leaves a source out); make the negative ones positive or 0"
            require(all(math.isfinite(w) and w >= 0 for w in weights), "dataset_weights", weights, expected)
            require(sum(weights) > 0, "dataset_weights", weights, "weights with a positive sum; raise one above 0")
        expected = "given to mix several streamed sources, whose sizes are unknown; pass one weight per source"
        require(weights is not None or len(names) == 1 or not self.streaming, "dataset_weights", weights, expected)
        buffer = self.stream_shuffle_buffer
        expected = f"at least one packing batch ({PACK_BATCH_DOCUMENTS} documents), or a smaller buffer barely mixes"
        require(buffer >= PACK_BATCH_DOCUMENTS, "stream_shuffle_buffer", buffer, expected + "; raise it")


@dataclass
class EvalDataArguments(DataArguments):
    """The held-out text: `DataArguments` whose split defaults to `test`, which training never reads."""

    _argument_group_name = "Held-out data"

    dataset_split: str = flag("The split to evaluate on (held out from training).", "test")


@dataclass
class SaeTrainingArguments(Checked):
    """How to train: the schedule, the activation stream, and where results go."""

    _argument_group_name = "Training"

    train_tokens: int | None = flag(
        "Tokens of text to train on (with --epochs E over a new cache: read once, trained on E times). Default: the "
        f"default run, about 11 minutes on 2 CPU cores: {DEFAULT_RUN_TOKENS:,} tokens, --epochs {DEFAULT_RUN_EPOCHS} "
        f"and --learning_rate {DEFAULT_RUN_LEARNING_RATE:g} for SAEs; {DEFAULT_TRAIN_TOKENS:,} tokens for a "
        "transcoder run or one given a cache.",
        None,
    )
    batch_size: int = flag("Tokens per optimiser step, over all processes and accumulation steps.", 4096)
    gradient_accumulation_steps: int = flag(
        "Micro-batches per optimiser step: each process computes batch_size / (processes x this) tokens at a time.", 1
    )
    learning_rate: float | None = flag(
        f"Adam learning rate. Default: {DEFAULT_RUN_LEARNING_RATE:g} in the default run (see --train_tokens), "
        f"{DEFAULT_LEARNING_RATE:g} otherwise.",
        None,
    )
    lr_warmup_fraction: float = flag("Fraction of steps with linear lr warm-up.", 0.02)
    lr_decay_fraction: float = flag("Fraction of final steps decaying lr to 0.", 0.2)
    sparsity_warmup_fraction: float = flag("Fraction of steps over which the sparsity coefficient ramps up.", 0.05)
    max_grad_norm: float = flag("Gradient clipping norm (0 disables).", 1.0)
    dead_after_tokens: int | None = flag(
        "A latent is dead after this many tokens without firing (default: a quarter of the run, at most 10M).", None
    )
    b_dec_init: Literal["geometric_median", "mean", "zero"] = flag("How b_dec starts.", "geometric_median")
    normalize_activations: bool = flag(
        "Scale activations to mean norm sqrt(d_in) while training (folded into the saved weights).", True
    )
    shuffle_buffer_tokens: int = flag("Tokens mixed in the shuffling buffer (0: no shuffling).", 65536)
    prefetch_chunks: int | None = flag(
        "LM batches harvested ahead on a background thread, so that harvesting overlaps the SAE step. Default: 2 on "
        "a GPU, 0 on the CPU (where both would compete for the same cores).",
        None,
    )
    activation_cache: str | None = flag(
        "A folder of cached activations (`hf-sae cache`): replayed if it exists, else written first with "
        "--train_tokens tokens. Replay draws a fresh random order every epoch.",
        None,
    )
    epochs: float | None = flag(
        "Passes over the activations. With --activation_cache: over that cache (replaces --train_tokens). Without: "
        "the run reads --train_tokens tokens of text once, caches their activations in the hf_sae cache (reused by "
        "later runs of the same model, hookpoints and text) and trains this many passes over them; 1 reads fresh "
        "text throughout. Default: 1, or the default run's (see --train_tokens).",
        None,
    )
    allow_many_epochs: bool = flag(
        f"With --activation_cache: let --train_tokens exceed {MAX_EPOCHS} passes over the cache (refused otherwise, "
        "before training: a bigger cache is usually what the run needs).",
        False,
    )
    mixed_precision: MixedPrecision | None = flag(
        "SAE step precision (autocast): auto picks bf16 where the hardware multiplies it faster, `no` is fp32; "
        "none leaves it to accelerate's setting.",
        "auto",
    )
    output_dir: str = flag("Where the SAEs, logs and checkpoints go.", "outputs/sae")
    overwrite_output_dir: bool = flag("Replace a previous run in output_dir.", False)
    resume_from_checkpoint: str | None = flag(
        "A checkpoint directory (a bare `checkpoint-N` is also looked for in output_dir), or `latest` for the "
        "newest in output_dir.",
        None,
    )
    save_steps: int = flag("Save a resumable checkpoint every N steps (0: never).", 1000)
    save_total_limit: int = flag("Checkpoints kept; older ones are deleted.", 2)
    logging_steps: int = flag("Log metrics every N steps.", 10)
    report_to: Literal["tensorboard", "wandb", "none"] = flag("Where metrics are logged.", "tensorboard")
    eval_tokens: int | None = flag(  # `%%` prints `%`: argparse formats every help text with `%`
        f"Held-out tokens for the final FVU / L0 (0: skip). Default (none): {EVAL_FRACTION:.0%}% of the training "
        f"budget, at least one context block, at most {EVAL_TOKENS_CAP:,}.",
        None,
    )
    seed: int = flag("Random seed.", 0)
    num_processes: int = flag(
        "Processes to train with on this machine: `hf-sae train` starts them with torchrun (1: this process).", 1
    )
    ddp_timeout: int = flag("Seconds a process waits at a collective for a peer before the run stops.", 1800)
    distribute_hookpoints: bool = flag(
        "Give each process the SAEs of some hookpoints (round robin) instead of a copy of all: activations go to "
        "their owner, so memory per process is the SAEs it owns. Needs at least as many hookpoints as processes.",
        False,
    )
    shard_features: int = flag(
        "Split every SAE's latents over this many processes (Gao et al. 2024): each holds its rows of the encoder "
        "and decoder and their optimiser state, so memory per process is 1 / N of the SAEs. Must divide the "
        "processes (the groups are data parallel) and the latent count.",
        1,
    )

    def with_learning_rate(self, default_run: bool = False) -> "SaeTrainingArguments":
        """These arguments with --learning_rate resolved where it was not given: the default run's, or the usual."""
        if self.learning_rate is not None:
            return self
        return replace(self, learning_rate=DEFAULT_RUN_LEARNING_RATE if default_run else DEFAULT_LEARNING_RATE)

    def check(self) -> None:
        positive = "a positive integer"
        require(self.batch_size >= 1, "batch_size", self.batch_size, positive)
        for name in ("gradient_accumulation_steps", "num_processes", "ddp_timeout", "shard_features"):
            require(getattr(self, name) >= 1, name, getattr(self, name), positive)
        tokens = self.train_tokens
        require(tokens is None or tokens >= self.batch_size, "train_tokens", tokens, "at least --batch_size, or none")
        require(self.logging_steps >= 1, "logging_steps", self.logging_steps, positive)
        require(self.save_steps >= 0, "save_steps", self.save_steps, "0 (never) or a positive integer")
        require(self.save_total_limit >= 1, "save_total_limit", self.save_total_limit, positive)
        held_out = self.eval_tokens
        require(held_out is None or held_out >= 0, "eval_tokens", held_out, "0 (skip), a positive integer or none")
        require(self.shuffle_buffer_tokens >= 0, "shuffle_buffer_tokens", self.shuffle_buffer_tokens, ">= 0")
        prefetch = self.prefetch_chunks
        require(prefetch is None or prefetch >= 0, "prefetch_chunks", prefetch, "0 (off), a positive integer or none")
        rate = self.learning_rate
        require(rate is None or (math.isfinite(rate) and rate > 0), "learning_rate", rate, "a number > 0, or none")
        require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0 (0 disables)")
        for name in ("lr_warmup_fraction", "lr_decay_fraction", "sparsity_warmup_fraction"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "a fraction in [0, 1]")
        dead = self.dead_after_tokens
        require(dead is None or dead >= 1, "dead_after_tokens", dead, "a positive integer, or none")
        epochs = self.epochs
        require(epochs is None or (math.isfinite(epochs) and epochs > 0), "epochs", epochs, "a number > 0, or none")
        fresh = "at least 1 without --activation_cache (passes over the text a run reads)"
        require(epochs is None or epochs >= 1 or bool(self.activation_cache), "epochs", epochs, fresh)
        schedule = self.lr_warmup_fraction + self.lr_decay_fraction
        require(schedule <= 1, "lr_decay_fraction", self.lr_decay_fraction, "at most 1 - --lr_warmup_fraction")
        check_batch_division(self.batch_size, self.num_processes, self.gradient_accumulation_steps)
        require_folder("output_dir", self.output_dir)
        require_folder("activation_cache", self.activation_cache)
        if self.report_to != "none" and not TRACKER_INSTALLED[self.report_to]():  # accelerate's own tests
            raise MissingDependencyError(
                f"--report_to {self.report_to} needs the `{self.report_to}` package, which is not installed (the "
                f"run would log nowhere without a word). `pip install {self.report_to}`, or pass --report_to none."
            )

    def held_out_tokens(self, context_size: int, trained_tokens: int) -> int:
        """The final report's budget: --eval_tokens, or a share of the `trained_tokens` (EVAL_FRACTION), at least one
        block of `context_size` and at most EVAL_TOKENS_CAP, so that a short run is not mostly evaluation."""
        if self.eval_tokens is not None:
            return self.eval_tokens
        return min(EVAL_TOKENS_CAP, max(context_size, round(EVAL_FRACTION * trained_tokens)))


TRAIN_GROUPS = (SaeArguments, LanguageModelArguments, DataArguments, SaeTrainingArguments)
