"""An SAE's feature metadata as Neuronpedia's upload takes it: the batch files SAEDashboard's Neuronpedia runner writes
(`sae_dashboard.neuronpedia`: `NeuronpediaDashboardBatch`, `NeuronpediaDashboardFeature`,
`NeuronpediaDashboardActivation`), the dead features it skips, and explanations as Neuronpedia's database exports
them (what the `neuronpedia` client's `Explanation.from_np_db_json` reads).

    <folder>/batch-0.json, batch-1.json, ...   {"model_id", "layer", "sae_set", "sae_id_suffix", "features": [...]}
    <folder>/skipped_indexes.json              {"model_id", "layer", "sae_set", "log_sparsity", "skipped_indexes"}
    <folder>/explanations.json                 [{"modelId", "layer", "index", "description", ...}], when there are any

What hf_sae collects maps one to one: frequency -> `frac_nonzero`, logit effects -> `pos_str` / `neg_str` with
their values and the logit histogram, decoder neighbours -> `correlated_features_*` (SAEDashboard puts the cosine in
`*_l1`), the log-binned activation histogram -> `freq_hist_data_*` (its non-empty bins at their geometric centres),
the top contexts -> activations with `bin_min = -1` as SAEDashboard marks its top group, and each activation-quantile
bin of the sampled contexts -> activations with that bin's range and share (`1 / quantile_bins` of the firings).
Neuronpedia's source id is `<layer>-<sae_set>`.
"""

import json
import math
import re
from pathlib import Path

from ..errors import FeatureMetadataError
from ..feature_store import FeatureMetadata
from ..formats import names
from ..layout import replace_folder, staging_folder, write_json, write_text
from ..modeling_sae import SaeModel

BATCH_SIZE = 128  # features per batch file, as SAEDashboard's runner writes them by default
SAE_SET = "hf-sae"
EXPLANATION_TYPE = "hf_sae"  # Neuronpedia's `typeName` of an explanation: the method that wrote it


def _rounded(values) -> list[float]:
    return [round(float(v), 3) for v in values]  # SAEDashboard rounds every list to 3 decimals


def neuronpedia_layer(hookpoint: str, model: str | None) -> int:
    """The block index Neuronpedia files a source under (`model.layers.6.mlp` -> 6)."""
    match = re.match(r"blocks\.(\d+)\.", names.module_to_transformer_lens(hookpoint, model) or "")
    if not match:
        match = re.search(r"\.(\d+)(\.|$)", hookpoint)
    if not match:
        raise FeatureMetadataError(
            f"Neuronpedia files an SAE under a layer number; the hookpoint {hookpoint!r} names none. Pass `layer=`."
        )
    return int(match.group(1))


def _activation(row: dict, bin_min: float, bin_max: float, bin_contains: float) -> dict:
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": bin_contains,
        "tokens": list(row["tokens"]),
        "values": _rounded(row["activations"]),
        "qualifying_token_index": int(row["peak"]),
    }


def _activations(features: FeatureMetadata, index: int, max_activation: float) -> list[dict]:
    """The top contexts as SAEDashboard's top group, then each quantile bin of the sampled contexts."""
    top = features.examples_table(index).sort_by("rank").to_pylist()
    out = [_activation(row, -1, round(max_activation, 3), -1) for row in top]
    table = features.quantile_examples_table(index)
    rows = [] if table is None else table.sort_by([("bin", "ascending"), ("activation", "descending")]).to_pylist()
    share = 1 / features.metadata.get("quantile_bins", 10)
    for which in sorted({row["bin"] for row in rows}):
        group = [row for row in rows if row["bin"] == which]
        low, high = min(r["activation"] for r in group), max(r["activation"] for r in group)
        out += [_activation(row, round(low, 3), round(high, 3), share) for row in group]
    return out


def _histogram(counts: list[int], edges: list[float]) -> tuple[list[float], list[float]]:
    """Non-empty bins of a log-binned histogram as (bin centres, heights)."""
    bins = [(math.sqrt(edges[i] * edges[i + 1]), n) for i, n in enumerate(counts) if n]
    return [float(f"{c:.4g}") for c, _ in bins], [float(n) for _, n in bins]  # 4 digits: the bins span 1e-4..1e4


def _logit_histogram(stats: dict) -> tuple[list[float], list[float]]:
    """Equal-width bins from the minimum to the maximum logit effect as (bin centres, heights)."""
    counts, (low, high) = stats.get("logit_histogram") or [], stats.get("logit_range") or (0.0, 0.0)
    width = (high - low) / max(len(counts), 1)
    return _rounded(low + (i + 0.5) * width for i in range(len(counts))), [float(n) for n in counts]


def dashboard_feature(features: FeatureMetadata, index: int, stats: dict) -> dict:
    """One `NeuronpediaDashboardFeature` as a dict, from hf_sae's statistics of feature `index`."""
    meta = features.metadata
    freq_values, freq_heights = _histogram(stats["histogram"], meta["histogram_edges"])
    logit_values, logit_heights = _logit_histogram(stats)
    neighbours = _rounded(stats.get("neighbour_cosines") or [])
    return {
        "feature_index": index,
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [int(i) for i in stats.get("neighbour_ids") or []],
        "correlated_features_l1": neighbours,
        "correlated_features_pearson": [],
        "neg_str": list(stats.get("suppressed_tokens") or []),
        "neg_values": _rounded(stats.get("suppressed_logits") or []),
        "pos_str": list(stats.get("promoted_tokens") or []),
        "pos_values": _rounded(stats.get("promoted_logits") or []),
        "frac_nonzero": float(stats["frequency"]),
        "freq_hist_data_bar_values": freq_values,
        "freq_hist_data_bar_heights": freq_heights,
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": int(meta.get("blocks") or 0),
        "n_tokens_in_prompt": int((meta.get("data") or {}).get("context_size") or 0),  # the block length read
        "dataset": _dataset(meta),
        "activations": _activations(features, index, float(stats["max_activation"])),
        "decoder_weights_dist": [],
        "vector": [],
    }


def _dataset(meta: dict) -> str:
    data = meta.get("data") or {}
    named = data.get("dataset_name") or data.get("dataset")
    return ", ".join(named) if isinstance(named, list) else str(named or "")


def explanation_records(features: FeatureMetadata, model_id: str, source: str) -> list[dict]:
    """LLM explanations (`hf-sae explain`) and the labels people set, as Neuronpedia's database rows."""
    saved = features.explanations
    explainer = saved.get("explainer")
    # Neuronpedia's database names the source `layer`; the client reads it as `source`: both are written.
    rows = [
        {
            "modelId": model_id,
            "layer": source,
            "source": source,
            "index": str(i),
            "description": entry["explanation"],
            "typeName": EXPLANATION_TYPE,
            "explanationModelName": explainer,
        }  # fmt: skip
        for i, entry in sorted(saved.get("features", {}).items(), key=lambda kv: int(kv[0]))
        if entry.get("explanation")
    ]
    rows += [
        {
            "modelId": model_id,
            "layer": source,
            "source": source,
            "index": str(i),
            "description": label,
            "typeName": "manual",
            "explanationModelName": None,
        }  # fmt: skip
        for i, label in sorted(features.labels.items())
    ]
    return rows


def to_neuronpedia(
    sae: SaeModel,
    folder: Path,
    *,
    model_id: str | None = None,
    sae_set: str = SAE_SET,
    layer: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> Path:
    """Write the feature metadata of `sae` (its `features/`, from `hf-sae features`) to `folder` in Neuronpedia's
    upload format; `model_id` defaults to the base model's name in lower case (`smollm2-135m-instruct`)."""
    features = sae.features
    cfg = sae.config
    if features is None or not features.metadata.get("histogram_edges"):
        raise FeatureMetadataError(
            f"Neuronpedia's upload is made of feature dashboards, and the SAE at {sae.name_or_path or '(in memory)'} "
            "has no feature metadata. Collect it first: `hf-sae features --sae <folder>`."
        )
    hookpoint = features.metadata.get("hookpoint") or cfg.hookpoint or ""
    model_id = model_id or (cfg.base_model_name_or_path or "model").rstrip("/").split("/")[-1].lower()
    layer = neuronpedia_layer(hookpoint, cfg.base_model_name_or_path) if layer is None else layer
    header = {"model_id": model_id, "layer": layer, "sae_set": sae_set, "sae_id_suffix": None}
    rows = features.stats_table.to_pylist()
    fired = [i for i, row in enumerate(rows) if row["count"] > 0]
    with staging_folder(folder) as tmp:
        for number, start in enumerate(range(0, len(fired), batch_size)):
            batch = [dashboard_feature(features, i, rows[i]) for i in fired[start : start + batch_size]]
            write_text(tmp / f"batch-{number}.json", json.dumps(header | {"features": batch}, ensure_ascii=False))
        skipped = sorted(set(range(len(rows))) - set(fired))
        write_json(tmp / "skipped_indexes.json", {"model_id": model_id, "layer": str(layer), "sae_set": sae_set,
                                                  "log_sparsity": None, "skipped_indexes": skipped})  # fmt: skip
        if explanations := explanation_records(features, model_id, f"{layer}-{sae_set}"):
            write_json(tmp / "explanations.json", explanations, indent=1)
        replace_folder(tmp, folder)
    return folder
