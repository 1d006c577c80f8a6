"""One group per `hf-sae` command beyond training, each checked as it is built:

CacheArguments       cache          EvaluationArguments   eval           FeatureArguments   features
BrowseArguments      browse         AppArguments          app            ExplainArguments   explain
PushArguments        push           PullArguments         pull           ConvertArguments   convert
CorpusArguments      prepare-corpus AttributeArguments    attribute
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ArgumentError, SaeNotFoundError
from ..fields import Checked, flag, require, require_distinct, require_folder
from ..layout import EVAL_REPORT, FEATURES, folder_name
from ..precision import CacheDtype
from ..sources import local_path


@dataclass
class CacheArguments(Checked):
    """What `hf-sae cache` writes: activations of some hookpoints, for `hf-sae train --activation_cache`."""

    _argument_group_name = "Cache"

    output_dir: str = flag("The cache folder to write.")
    hookpoints: list[str] = flag(
        "Module paths whose outputs are cached, as `named_modules()` spells them.",
        default_factory=lambda: ["model.layers.15"],
    )
    cache_tokens: int = flag(
        "Tokens to cache (counted tokens: position 0 and special tokens are left out).", 1_000_000
    )
    cache_dtype: CacheDtype = flag("The activations' precision on disk.", "bfloat16")
    overwrite: bool = flag("Replace a cache already at output_dir.", False)

    def check(self) -> None:
        require(bool(self.hookpoints), "hookpoints", self.hookpoints, "at least one module path")
        require_distinct("hookpoints", self.hookpoints)
        require(self.cache_tokens >= 1, "cache_tokens", self.cache_tokens, "a positive integer")
        require_folder("output_dir", self.output_dir)  # a file is no cache to --overwrite
        exists = Path(self.output_dir).exists()
        require(not exists or self.overwrite, "output_dir", self.output_dir, "a new folder, or pass --overwrite")


@dataclass
class EvaluationArguments(Checked):
    """What `hf-sae eval` measures, on how much text, and where the results go."""

    _argument_group_name = "Evaluation"

    sae: str = flag("A folder with config.json, a training run's folder, or a Hub repo id.")
    output_dir: str = flag("Where eval_results.json and the firing-density plots go.")
    hookpoints: list[str] | None = flag("Evaluate only these SAEs (default: all).", None)
    eval_tokens: int = flag("Tokens to evaluate on, rounded up to whole blocks.", 100_000)
    dense_threshold: float = flag("Latents firing on more than this share of tokens are dense.", 0.1)
    lm_metrics: bool = flag("Measure CE loss and KL (four LM forwards per block).", True)
    save_beside_saes: bool = flag("Also write metrics.json in each SAE folder.", False)
    overwrite: bool = flag("Replace an earlier report in output_dir.", False)
    revision: str | None = flag("Branch, tag or commit of a Hub repo.", None)
    device: str | None = flag("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)

    def check(self) -> None:
        require(self.eval_tokens >= 1, "eval_tokens", self.eval_tokens, "a positive integer")
        require(0 < self.dense_threshold <= 1, "dense_threshold", self.dense_threshold, "a fraction in (0, 1]")
        require_distinct("hookpoints", self.hookpoints)
        require_folder("output_dir", self.output_dir)
        check_sae_source(self.sae)
        if self.save_beside_saes and not Path(self.sae).expanduser().is_dir():
            raise ArgumentError(
                f"--save_beside_saes writes into local SAE folders, but {self.sae!r} is not one. Drop it."
            )
        report = Path(self.output_dir) / EVAL_REPORT
        expected = f"a folder without an earlier report ({report} exists): pass --overwrite to replace it, or choose "
        require(
            self.overwrite or not report.exists(), "output_dir", self.output_dir, expected + "another --output_dir"
        )


# `hf-sae features` reads as many tokens as the SAE trained on, within these bounds: enough to see a feature that
# fires once in a few thousand tokens a few times, and no more than a described feature's statistics need.
FEATURE_TOKENS_FLOOR, FEATURE_TOKENS_CAP = 20_000, 200_000


@dataclass
class FeatureArguments(Checked):
    """What `hf-sae features` collects, or explains; the text comes from `DataArguments`."""

    _argument_group_name = "Features"

    sae: str = flag("The SAE's folder (config.json, model.safetensors); features/ goes inside.")
    hookpoint: str | None = flag("Where the SAE reads. Default: its config's.", None)
    max_tokens: int | None = flag(
        "Tokens to collect statistics over. Default: as many as the SAE trained on (its metrics.json), at least "
        f"{FEATURE_TOKENS_FLOOR:,} and at most {FEATURE_TOKENS_CAP:,}; {FEATURE_TOKENS_CAP:,} where no record says.",
        None,
    )
    top_n: int = flag("Top activating contexts kept per feature.", 20)
    context_before: int = flag("Tokens shown before each context's peak.", 10)
    context_after: int = flag("Tokens shown after each context's peak.", 5)
    sample_size: int = flag("Contexts sampled per feature for the activation-quantile bins.", 40)
    skip_after_special: bool = flag("Leave the token right after BOS or a chat marker out of the statistics.", True)
    held_out: bool = flag(
        "Read the held-out text, the split the training run left out (a source's 'test' split, else every 50th "
        "document of 'train', as training's held-out report reads), in place of the default --dataset_split "
        "train; a split named with --dataset_split is read as named. --held_out false describes the training text.",
        True,
    )
    explain: str | None = flag("Instead: list the features that fire on this text.", None)
    top: int = flag("With --explain: features listed per token.", 5)
    device: str | None = flag("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)
    overwrite: bool = flag("Replace the statistics of an earlier run in <sae>/features (its labels are kept).", False)

    def check(self) -> None:
        check_local_sae_folder(self.sae)
        statistics = Path(self.sae).expanduser() / FEATURES
        expected = f"an SAE folder without earlier statistics ({statistics} exists): pass --overwrite to replace "
        expected += "them (labels are kept), or copy the SAE folder first"
        require(self.overwrite or self.explain is not None or not statistics.is_dir(), "sae", self.sae, expected)
        require_folder("sae", statistics)
        for name in ("max_tokens", "top_n", "top", "sample_size"):
            value = getattr(self, name)
            if value is not None or name != "max_tokens":  # max_tokens None: the SAE's training budget
                require(value >= 1, name, value, "a positive integer")
        for name in ("context_before", "context_after"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0")


@dataclass
class BrowseArguments(Checked):
    """What `hf-sae browse` writes."""

    _argument_group_name = "Browser"

    sae: str = flag("The SAE's folder, with features/ (from `hf-sae features`).")
    output_dir: str = flag("Where to write index.html (opens from file://).")
    examples: int = flag("Top contexts shown per feature.", 10)

    def check(self) -> None:
        check_local_sae_folder(self.sae)
        require(self.examples >= 1, "examples", self.examples, "a positive integer")


@dataclass
class AppArguments(Checked):
    """What `hf-sae app` serves, or writes as a Hub Space."""

    _argument_group_name = "App"

    sae: str | None = flag("The SAE: a folder with features/ (from `hf-sae features`) or a Hub repo id.", None)
    hookpoint: str | None = flag("Which SAE, when the folder or repo holds several.", None)
    graph: str | None = flag("Attribution graphs to show: a graph JSON (from `hf-sae attribute`) or a folder of them.",
                             None)  # fmt: skip
    transcoders: str | None = flag(
        "The per-layer transcoders (folder or Hub repo) to trace typed prompts and edit graphs with.", None
    )
    host: str = flag("The address to serve on (0.0.0.0 to let other machines in).", "127.0.0.1")
    port: int = flag("The port to serve on.", 7860)
    device: str | None = flag("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)
    write_space: str | None = flag("Instead: write a Hub Space folder that runs this app on --sae (a repo id).", None)

    def check(self) -> None:
        require(0 < self.port < 65536, "port", self.port, "a port number in 1-65535")
        if self.sae is None and self.graph is None and self.transcoders is None:
            raise ArgumentError(
                "hf-sae app needs something to show: --sae (an SAE's features), --graph (attribution graphs), "
                "--transcoders (to trace prompts), or several of them."
            )
        if self.write_space and self.sae is None:
            raise ArgumentError("--write_space writes a Space for one SAE: name it with --sae.")


@dataclass
class ExplainArguments(Checked):
    """What `hf-sae explain` explains and scores, and with which LLM."""

    _argument_group_name = "Explanations"

    sae: str = flag("The SAE's folder, with features/ (from `hf-sae features`).")
    explainer: str | None = flag(
        "The LLM that explains and scores: a local chat model (built-in name, Hub id or folder; default: the "
        "built-in smollm2-135m-instruct), or with --explainer_endpoint the model name to ask the server for.",
        None,
    )
    explainer_endpoint: str | None = flag(
        "An OpenAI-compatible server to use instead of a local model, e.g. http://127.0.0.1:8000/v1.", None
    )
    api_key: str | None = flag("A key for the endpoint, sent as a Bearer token.", None)
    features: list[int] | None = flag("Only these feature ids (default: every feature that fired).", None)
    max_features: int | None = flag("Explain at most this many features in this run.", None)
    batch_size: int = flag("Features explained per batch; explanations.json is saved after each.", 8)
    explain_examples: int = flag("Activating contexts shown to the explainer.", 10)
    score_examples: int = flag("Held-out activating contexts per score, and as many non-activating ones.", 5)
    fuzzing: bool = flag("Also score by fuzzing (marked tokens), besides detection.", True)
    control: bool = flag("Also score the explanations shuffled across features, as a control.", False)
    overwrite: bool = flag("Explain again the features explained before (default: skip them).", False)
    seed: int = flag("Seed of the context sampling.", 0)
    device: str | None = flag("Where a local explainer runs, e.g. cpu or cuda:0.", None)

    def check(self) -> None:
        for name in ("batch_size", "explain_examples", "score_examples"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "a positive integer")
        if self.max_features is not None:
            require(self.max_features >= 1, "max_features", self.max_features, "a positive integer")


@dataclass
class PushArguments(Checked):
    """What `hf-sae push` uploads, and where."""

    _argument_group_name = "Push"

    sae: str = flag("An SAE folder, or a training output with hookpoint folders.")
    repo_id: str = flag("The Hub repo, e.g. `you/smollm2-saes`; created if needed.")
    private: bool = flag("Create the repo private.", False)
    revision: str | None = flag("The branch to commit to (default: main).", None)
    token: str | None = flag("A write token (default: the logged-in one, or HF_TOKEN).", None)
    commit_message: str | None = flag("The commit message.", None)
    create_pr: bool = flag("Open a pull request instead of committing to the branch.", False)
    datasets: list[str] | None = flag("Hub ids of the datasets the SAEs were trained on, for the card.", None)
    license: str | None = flag("A license id for the card, e.g. apache-2.0.", None)
    tags: list[str] | None = flag("Extra tags for the card.", None)
    space: str | None = flag(
        "Also push a Gradio Space running `hf-sae app` on the repo, e.g. `you/saes-explorer`.", None
    )
    space_hookpoint: str | None = flag("With --space and several SAEs: the one the Space explores.", None)


@dataclass
class PullArguments(Checked):
    """What `hf-sae pull` downloads."""

    _argument_group_name = "Pull"

    repo_id: str = flag("The Hub repo to download from.")
    hookpoints: list[str] | None = flag("Only these (default: all).", None)
    revision: str | None = flag("Branch, tag or commit.", None)
    token: str | None = flag("A read token for private repos.", None)
    output_dir: str | None = flag("Also save them here (default: the Hub cache only).", None)
    overwrite: bool = flag("Replace SAEs of the same hookpoints already in output_dir.", False)

    def check(self) -> None:
        require_distinct("hookpoints", self.hookpoints)
        require_folder("output_dir", self.output_dir)


@dataclass
class ConvertArguments(Checked):
    """What `hf-sae convert` reads and writes."""

    _argument_group_name = "Conversion"

    src: str = flag("SAEs in any known format: a folder, a Hub repo, or a release name (`gemma-scope-2b-pt-res`).")
    dst: str = flag("The output folder: one SAE goes there, several go to one subfolder per hookpoint.")
    to: Literal["saelens", "sparsify", "hf_sae", "circuit_tracer", "neuronpedia"] = flag(
        "The format to write; circuit_tracer takes a whole transcoder set or a cross-layer transcoder; neuronpedia "
        "writes an SAE's feature metadata (from `hf-sae features`) as Neuronpedia's upload takes it.",
        "hf_sae",
    )
    hookpoints: list[str] | None = flag("Only these hookpoints of SRC (default: all).", None)
    width: int | None = flag("Which width, where SRC has several per hookpoint (Gemma Scope).", None)
    l0: float | None = flag("Which L0, where SRC has several per hookpoint (Gemma Scope).", None)
    revision: str | None = flag("Branch, tag or commit of a Hub repo.", None)
    token: str | None = flag("A read token for private repos.", None)
    overwrite: bool = flag("Replace DST if it is not empty.", False)
    unit_norm_decoder: bool = flag(
        "Write decoder rows of unit norm, each latent scaled up by its row's norm (SAELens' fold_W_dec_norm): the "
        "same reconstructions. Refused for TopK / BatchTopK SAEs whose rows differ in norm.",
        False,
    )

    def check(self) -> None:
        check_sae_source(self.src, "src")
        require_distinct("hookpoints", self.hookpoints)
        require_folder("dst", self.dst)
        if self.to == "circuit_tracer":
            chosen = [f"--{name}" for name in ("hookpoints", "width", "l0") if getattr(self, name) is not None]
            if chosen:
                raise ArgumentError(
                    f"{' and '.join(chosen)} choose SAEs, but --to circuit_tracer writes the whole transcoder set or "
                    "cross-layer transcoder (circuit-tracer replaces every MLP). Drop them."
                )
            if self.unit_norm_decoder:
                raise ArgumentError(
                    "--unit_norm_decoder rescales one SAE at a time; --to circuit_tracer writes a transcoder set or "
                    "cross-layer transcoder as circuit-tracer holds it. Drop --unit_norm_decoder, or export with "
                    "--to hf_sae or --to saelens."
                )


@dataclass
class AttributeArguments(Checked):
    """What `hf-sae attribute` traces, through which transcoders, and where the graph goes."""

    _argument_group_name = "Attribution"

    prompt: str = flag("The text whose next-token prediction is traced (tokenized with the model's special tokens).")
    transcoders: str = flag(
        "A local folder or Hub repo id: per-layer transcoders trained by hf_sae (one folder per "
        "`model.layers.{l}.mlp.input`), a saved cross-layer transcoder, or a circuit-tracer transcoder folder."
    )
    model: str | None = flag(
        "The LM: a Hub id, a local directory, or the built-in `smollm2-135m-instruct` (the default).", None
    )
    output_dir: str = flag("Where <slug>.json and graph-metadata.json go (circuit-tracer's graph files).", "graphs")
    slug: str | None = flag("The graph's name and file name (default: made from the prompt).", None)
    max_feature_nodes: int | None = flag("At most this many feature nodes, the most influential (none: all).", 8192)
    node_threshold: float = flag("Share of the nodes' influence on the logits that pruning keeps.", 0.8)
    edge_threshold: float = flag("Share of the edges' influence on the logits that pruning keeps.", 0.98)
    top_logits: int = flag("At most this many next tokens are traced, the most probable.", 10)
    logit_probability: float = flag("Trace next tokens until they hold this much probability.", 0.95)
    batch_size: int = flag("Targets per backward pass (the prompt is repeated this many times).", 64)
    revision: str | None = flag("Branch, tag or commit of a Hub repo of transcoders.", None)
    device: str | None = flag("Where the LM runs, e.g. cpu or cuda:1 (default: the GPU where there is one).", None)

    def check(self) -> None:
        require(bool(self.prompt.strip()), "prompt", self.prompt, "a text with at least one word")
        for name in ("node_threshold", "edge_threshold", "logit_probability"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "a share in [0, 1] (e.g. 0.8 keeps 80% of the influence)")
        for name in ("top_logits", "batch_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "a positive integer")
        nodes = self.max_feature_nodes
        require(nodes is None or nodes >= 0, "max_feature_nodes", nodes, "an integer >= 0, or none for all")
        require_folder("output_dir", self.output_dir)
        local_path(self.transcoders, "--transcoders", SaeNotFoundError)  # a typo'd path is never a Hub id
        folder_name(self.graph_slug, "--slug", "Pass --slug as a plain file name, e.g. capital-of-france.")

    @property
    def graph_slug(self) -> str:
        """`slug`, or the prompt's first words in lower case joined by hyphens."""
        return self.slug or re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:48].strip("-") or "graph"


@dataclass
class CorpusArguments(Checked):
    """How `hf-sae prepare-corpus` builds the built-in corpus."""

    _argument_group_name = "Corpus"

    output_dir: str | None = flag("Where to save it (default: the hf_sae cache).", None)
    test_fraction: float = flag("Share of each source held out as test.", 0.05)
    seed: int = flag("Seed of the train/test split.", 0)
    force: bool = flag("Rebuild even if the corpus is already there.", False)
    sources: list[str] | None = flag("Sources to include (default: all).", None)

    def check(self) -> None:
        require(0 < self.test_fraction < 1, "test_fraction", self.test_fraction, "a fraction in (0, 1)")
        require_folder("output_dir", self.output_dir)


def check_sae_source(source: str, flag: str = "sae") -> None:
    """A mistyped local path is refused here, never sent to the Hub as a repo id."""
    local_path(source, f"--{flag}", SaeNotFoundError)


def check_local_sae_folder(folder: str) -> None:
    check_sae_source(folder)
    if not Path(folder).expanduser().is_dir():
        raise ArgumentError(f"--sae must be a local SAE folder (config.json, model.safetensors); got {folder!r}.")
