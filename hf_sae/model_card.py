"""The Hub model card of a set of SAEs: YAML metadata (library_name, base_model, tags, datasets, model-index from the
evaluation metrics) and prose rendered from the Jinja template in `model_cards/` (shipped in the package)."""

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_clt import CltConfig
from .configuration_sae import SaeConfig
from .errors import SaeNotFoundError
from .layout import FEATURES, METRIC_NAMES, METRICS, PER_SOURCE, RUN_KEYS, TRAIN_TOKENS, read_json

CARD_TEMPLATE = "sae_card.md.j2"
CLT_CARD_TEMPLATE = "clt_card.md.j2"
CARD_TAGS = ["sparse-autoencoder", "interpretability", "hf_sae"]
CLT_TAGS = ["cross-layer-transcoder", "transcoder", "circuit-tracing", "interpretability", "hf_sae"]
CARD_ARGUMENTS = ("datasets", "license", "tags")  # the card metadata a push takes


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
    (`layout.METRIC_NAMES`) get readable names.

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
                name = METRIC_NAMES.get(key, key)
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
    columns = [k for k in METRIC_NAMES if any(k in m for m in metrics.values())]
    columns = columns or list(dict.fromkeys(r.metric_type for r in data.eval_results or []))
    # The model-index and the table are pooled; the card names the texts behind them (per-source numbers are in
    # each SAE's metrics.json).
    texts = [read_data_sources(folder) for folder in folders.values()]
    train_data = list(dict.fromkeys(pair for pairs, _ in texts for pair in pairs))
    sources = sorted({source for _, names in texts for source in names})
    rows = [
        {
            "hookpoint": h,
            "config": c,
            "metrics": [metrics[h].get(k) for k in columns],
            "tokens": metrics[h].get(TRAIN_TOKENS),
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
        base_models=base_models,
        architectures=architectures,
        example=next(iter(configs)),
        single=single,
        train_data=train_data,
        sources=sources,
    )
