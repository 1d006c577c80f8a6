"""A static HTML feature browser that opens from its folder (file://), with no server, no network and no CDN.

    <output_dir>/index.html           the page: inline CSS and JS, and the feature list as inline JSON
    <output_dir>/data/fNNNN.js         one script per `chunk_size` features: histograms, logit effects, top contexts

The list (labels, frequencies, maximum activations and the tokens search matches) is inline, so searching, sorting
and paging need nothing else; a feature's details come in a chunk script the page adds when the feature is opened
(`<script src>` works from file://, where fetch() does not). A 16k-feature SAE gives an index of about 1.2 MB and
64 chunks.
"""

import json
import math
import numbers
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .autointerp import explanations_of
from .errors import ArgumentError
from .feature_store import FeatureMetadata, load_features
from .layout import replace_folder, staging_folder

TEMPLATE = "browser_template.html"
MAX_HIST_BARS = 40
DATA_MARKER = "/*HF_SAE_DATA*/"


# Inside <script>, `<!--`, `<script` and `</script` change how the HTML parser reads the rest of the page: every
# markup character is written as a JSON escape, which reads back as the same string. U+2028/9 end lines in old JS.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _js(value) -> str:
    """JSON that is safe inside a <script> element, whatever the strings in it hold."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(str.maketrans(_SCRIPT_ESCAPES))


def _num(x, digits: int = 4) -> float | None:
    """A float rounded to `digits` significant digits, or None for NaN (or what is no number), so that the JSON stays
    short."""
    return None if not isinstance(x, numbers.Real) or not math.isfinite(x) else float(f"{x:.{digits}g}")


def _histogram(counts: np.ndarray, edges: np.ndarray) -> list:
    """[low edge, high edge, counts...] over the occupied bins, merged to at most `MAX_HIST_BARS` log-spaced bars."""
    occupied = np.flatnonzero(counts)
    if not occupied.size:
        return []
    first, last = occupied[0], occupied[-1] + 1
    step = math.ceil((last - first) / MAX_HIST_BARS)
    last = min(first + step * math.ceil((last - first) / step), len(counts))
    padded = np.zeros(step * math.ceil((last - first) / step), dtype=np.int64)
    padded[: last - first] = counts[first:last]
    bars = padded.reshape(-1, step).sum(1)
    return [_num(edges[first]), _num(edges[min(first + step * len(bars), len(edges) - 1)]), *bars.tolist()]


def _top_contexts(features: FeatureMetadata, examples: int) -> pa.Table:
    """The best `examples` contexts of every feature, ordered by (feature, rank)."""
    table = features.examples_table().select(["feature", "rank", "activation", "peak", "tokens", "activations"])
    return table.filter(pc.field("rank") < examples).sort_by([("feature", "ascending"), ("rank", "ascending")])


def _sampled_contexts(features: FeatureMetadata) -> pa.Table | None:
    """The contexts sampled by activation-quantile bin, ordered by (feature, bin, activation descending)."""
    table = features.quantile_examples_table()
    if table is None:
        return None
    table = table.select(["feature", "bin", "activation", "peak", "tokens", "activations"])
    return table.sort_by([("feature", "ascending"), ("bin", "ascending"), ("activation", "descending")])


def _context_columns(contexts: pa.Table, ids: range, maxima: np.ndarray) -> tuple[dict, pa.Array]:
    """The contexts of features `ids` as flat columns, with activations as levels 0-255 of the feature's maximum,
    and their token strings (to be encoded with the chunk's vocabulary)."""
    first, stop = np.searchsorted(contexts.column("feature").to_numpy(), [ids.start, ids.stop])
    rows = contexts.slice(first, stop - first)
    tokens, acts = rows.column("tokens").combine_chunks(), rows.column("activations").combine_chunks()
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    scale = np.repeat(maxima[rows.column("feature").to_numpy()], lengths)
    levels = np.rint(255 * acts.flatten().to_numpy(zero_copy_only=False) / scale)
    columns = {
        "feature": rows.column("feature").to_pylist(),
        "act": [_num(a) for a in rows.column("activation").to_pylist()],
        "peak": rows.column("peak").to_pylist(),
        "len": lengths.tolist(),
        "acts": np.nan_to_num(levels).clip(0, 255).astype(int).tolist(),
    }
    if "bin" in rows.column_names:
        columns["bin"] = rows.column("bin").to_pylist()
    return columns, tokens.flatten().cast(pa.string())


def _chunk(
    features: FeatureMetadata, ids: range, contexts: pa.Table, edges: np.ndarray, sampled: pa.Table | None = None
) -> dict:
    """The details of features `ids`: quantiles, histograms, logit effects, decoder neighbours, and their top and
    sampled contexts as flat columns, with each token string stored once per chunk."""
    stats = features.stats_table.slice(ids.start, len(ids))
    quantiles = [f"p{100 * q:g}" for q in features.metadata.get("quantiles", [])]
    maxima = features.stats_table.column("max_activation").to_numpy()
    groups = [_context_columns(table, ids, maxima) for table in (contexts, sampled) if table is not None]
    keys = ("promoted_tokens", "promoted_logits", "suppressed_tokens", "suppressed_logits")
    known = "promoted_tokens" in stats.column_names  # no logit effects when the SAE's width is not the model's
    effects = {key: stats.column(key).to_pylist() if known else [[]] * len(ids) for key in keys}
    effect_tokens = [t for k in range(len(ids)) for key in keys[::2] for t in effects[key][k]]
    strings = pa.concat_arrays([*(tokens for _, tokens in groups), pa.array(effect_tokens, pa.string())])
    encoded = strings.dictionary_encode()
    codes, start = encoded.indices.to_numpy(), 0
    for columns, tokens in groups:
        columns["tokens"] = codes[start : start + len(tokens)].tolist()
        start += len(tokens)
    effect_codes = iter(codes[start:].tolist())
    optional = ("logit_histogram", "logit_range", "neighbour_ids", "neighbour_cosines")
    present = [key for key in optional if key in stats.column_names]
    out = {}
    for k, row in enumerate(stats.select(["feature", "histogram", *quantiles, *present]).to_pylist()):
        entry = {
            "q": [_num(row[q]) for q in quantiles],
            "h": _histogram(np.asarray(row["histogram"]), edges),
            "pro": [[next(effect_codes), _num(v)] for v in effects["promoted_logits"][k]],
            "sup": [[next(effect_codes), _num(v)] for v in effects["suppressed_logits"][k]],
        }
        if "logit_histogram" in row:  # [low, high, counts...] over equal-width bins
            entry["lh"] = [*map(_num, row["logit_range"]), *row["logit_histogram"]]
        if "neighbour_ids" in row:
            entry["nb"] = [[j, _num(c)] for j, c in zip(row["neighbour_ids"], row["neighbour_cosines"])]
        out[row["feature"]] = entry
    samples = groups[1][0] if len(groups) > 1 else None
    return {
        "vocab": encoded.dictionary.to_pylist(),
        "features": out,
        "quantiles": quantiles,
        "contexts": groups[0][0],
        "samples": samples,
    }


def _index(features: FeatureMetadata, contexts: pa.Table) -> dict:
    """One entry per feature, columnar: what the list shows, sorts by and searches in."""
    table, num = features.stats_table, features.stats_table.num_rows
    tokens = contexts.column("tokens").combine_chunks()
    starts = tokens.offsets.to_numpy()[:-1] - tokens.offsets[0].as_py() + contexts.column("peak").to_numpy()
    peaks: list[set] = [set() for _ in range(num)]
    for feature, token in zip(contexts.column("feature").to_pylist(), pc.take(tokens.flatten(), starts).to_pylist()):
        peaks[feature].add(token.strip())
    promoted = table.column("promoted_tokens").to_pylist() if "promoted_tokens" in table.column_names else None
    search = [
        " ".join(filter(None, [*sorted(peaks[i]), *(t.strip() for t in (promoted[i][:5] if promoted else []))]))
        for i in range(num)
    ]
    explained = explanations_of(features).get("features", {})  # from `hf-sae explain`, when it ran
    scored = "interpretability" in table.column_names  # metadata from before the score has none
    entries = [explained.get(str(i), {}) for i in range(num)] if explained else []
    return {
        "explanation": [e.get("explanation") for e in entries],
        "scores": [[_num(e.get("detection"), 2), _num(e.get("fuzzing"), 2)] for e in entries],
        "label": [features.label(i) for i in range(num)],
        "user": [i in features.labels for i in range(num)],
        "freq": [_num(x) for x in table.column("frequency").to_pylist()],
        "max": [_num(x) for x in table.column("max_activation").to_pylist()],
        "mean": [_num(x) for x in table.column("mean_activation").to_pylist()],
        "peak": [_num(x) for x in table.column("robust_peak").to_pylist()]
        if "robust_peak" in table.column_names
        else None,
        "score": [_num(x, 2) for x in table.column("interpretability").to_pylist()] if scored else None,
        "dense": table.column("dense").to_pylist() if "dense" in table.column_names else None,
        "search": search,
    }


def write_browser(
    features: FeatureMetadata | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    examples: int = 10,
    chunk_size: int = 256,
    title: str | None = None,
) -> Path:
    r"""
    Write the feature browser for an SAE folder (or its `features/`, or a `FeatureMetadata`) to `output_dir`,
    atomically: a temporary folder, then a rename. Shows the top `examples` contexts of each feature.

    Example:

    ```python
    >>> write_browser("runs/default/model.layers.15", "runs/browser")
    PosixPath('runs/browser/index.html')
    ```
    """
    features = features if isinstance(features, FeatureMetadata) else load_features(features)
    meta = features.metadata
    edges = np.asarray(meta["histogram_edges"])
    contexts, sampled = _top_contexts(features, examples), _sampled_contexts(features)
    num = features.stats_table.num_rows
    keys = ("model_name_or_path", "hookpoint", "tokens", "num_latents", "top_n", "skip_after_special")
    info = {key: meta.get(key) for key in keys}
    rule = meta.get("interpretability") or {}
    info |= {"text": features.text_note, "threshold": rule.get("threshold"), "formula": rule.get("formula")}
    info |= {"clear_share": rule.get("clear_pattern_share"), "dense_threshold": rule.get("dense_threshold")}
    data = {
        "title": title or f"{meta.get('hookpoint') or 'SAE'} features",
        "meta": info,
        "chunkSize": chunk_size,
        "index": _index(features, contexts),
    }
    output_dir = Path(output_dir)
    if output_dir.is_dir() and not {p.name for p in output_dir.iterdir()} <= {"index.html", "data"}:
        raise ArgumentError(
            f"Expected a new or empty folder, or an earlier feature browser, for `output_dir`; {output_dir} holds "
            "other files, which writing the browser would replace. Choose another folder."
        )
    with staging_folder(output_dir) as tmp:
        (tmp / "data").mkdir()
        for start in range(0, num, chunk_size):
            chunk = _chunk(features, range(start, min(start + chunk_size, num)), contexts, edges, sampled)
            script = f"hfSaeChunk({start // chunk_size},{_js(chunk)});\n"
            (tmp / "data" / f"f{start // chunk_size:04d}.js").write_text(script, encoding="utf-8")
        template = resources.files("hf_sae").joinpath(TEMPLATE).read_text(encoding="utf-8")
        page = template.replace(DATA_MARKER, f"const DATA = {_js(data)};")
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / "data").chmod(0o755)
        replace_folder(tmp, output_dir)
    return output_dir / "index.html"
