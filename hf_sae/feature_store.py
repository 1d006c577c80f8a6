"""The feature store: per-feature metadata of one SAE, as saved in its `features/` folder and read back lazily.

    <sae_dir>/features/
        stats.parquet      one row per feature: firing count and frequency, activation mean / max / quantiles, a
                           log-binned histogram, logit effects, an automatic label
        examples.parquet   one row per (feature, rank): the top activating contexts with per-token activations
        quantile_examples.parquet   one row per sampled context: (feature, bin), bin 0 the weakest decile of the
                           feature's firings, with the same columns as the top contexts
        labels.json        labels people set, {"<feature>": "<label>"}
        metadata.json      how the metadata was made: model, hookpoint, data, tokens, histogram bin edges, ...
        random_contexts.parquet   random windows of the text with the features firing in each (`random_contexts`)
        explanations.json  explanations written by an LLM and their detection / fuzzing scores (`autointerp`)

A cross-layer transcoder keeps one such folder per layer, `<clt_dir>/features/layer_{l}/` (`clt_features` makes
them, `load_layer_features` reads them back as `{layer: FeatureMetadata}`).

`features.collect_feature_metadata` makes it; `SaeModel.features` reads it through `load_features`. Every table is
read through `read_parquet`, which bounds what a file (one from the Hub, say) may expand to in memory.
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import FeatureMetadataError
from .interpretability import NO_CLEAR_PATTERN, text_note
from .layout import FEATURES, replace_folder, staging_folder, write_json

STATS, EXAMPLES, QUANTILE_EXAMPLES = "stats.parquet", "examples.parquet", "quantile_examples.parquet"
LABELS, METADATA = "labels.json", "metadata.json"
RANDOM_CONTEXTS, EXPLANATIONS = "random_contexts.parquet", "explanations.json"
LAYER_FEATURES = "layer_{}"  # a cross-layer transcoder's features/ holds one folder per layer
# What reading a table may take in memory: this many times its file's size, and at least READ_FLOOR bytes. Statistics
# hf_sae wrote expand a few times; a forged table (one long string referenced by every row) would by 100,000.
MAX_EXPANSION, READ_FLOOR = 1000, 256 * 2**20
_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}  # bytes a value, decoded


def read_parquet(path: Path, **kwargs) -> pa.Table:
    """`pq.read_table(path, **kwargs)`, refused where it would take more memory than the file's size allows: first
    by what the file's metadata declares (values and their encoded sizes), then by what its strings decode to,
    measured while they are still dictionary-encoded (one long string shared by every row is small on disk)."""
    path = Path(path)
    try:
        limit, file = max(READ_FLOOR, MAX_EXPANSION * path.stat().st_size), pq.ParquetFile(path)
        if (declared := _declared_bytes(file.metadata)) > limit:
            raise _too_large(path, declared, limit, "its metadata declares")
        strings = [column.path for column in file.schema if column.physical_type == "BYTE_ARRAY"]
        table = pq.read_table(path, read_dictionary=strings, **kwargs)
        if (decoded := sum(_decoded_bytes(chunk) for column in table.columns for chunk in column.chunks)) > limit:
            raise _too_large(path, decoded, limit, "its strings decode to")
        return table.cast(file.schema_arrow)
    except (pa.ArrowException, OSError) as error:
        if isinstance(error, FeatureMetadataError):
            raise
        raise FeatureMetadataError(f"{path} is not a readable feature table ({error}). {_AGAIN}") from None


def _declared_bytes(meta: pq.FileMetaData) -> int:
    """Every column chunk's encoded size, plus its values at their decoded width (a string: its offset)."""
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    return sum(c.total_uncompressed_size + c.num_values * _WIDTHS.get(c.physical_type, 4) for c in chunks)


_AGAIN = "Collect the statistics again with `hf-sae features`, or download them again."


def _too_large(path: Path, size: int, limit: int, what: str) -> FeatureMetadataError:
    return FeatureMetadataError(
        f"{path} was refused: {what} {size:,} bytes in memory, from a file of {path.stat().st_size:,} bytes (at most "
        f"{limit:,} are read from it). It is not a table hf_sae wrote, or it was damaged. {_AGAIN}"
    )


def _decoded_bytes(array: pa.Array) -> int:
    """What `array` takes once its dictionaries are decoded, computed without decoding them."""
    if isinstance(array, pa.DictionaryArray):
        lengths = pc.binary_length(array.dictionary).take(array.indices)
        return 4 * len(array) + (pc.sum(lengths).as_py() or 0)
    if isinstance(array, pa.ListArray | pa.LargeListArray | pa.FixedSizeListArray):
        return 8 * len(array) + _decoded_bytes(array.flatten())
    return array.nbytes


@dataclass(repr=False)
class Feature:
    """One feature's metadata, as `sae.features[i]` returns it."""

    index: int
    label: str
    auto_label: str
    stats: dict
    examples: list[dict] = field(default_factory=list)
    quantile_examples: list[dict] = field(default_factory=list)  # sampled contexts by activation-quantile bin
    explanation: dict = field(default_factory=dict)  # an LLM's explanation and its scores, when `hf-sae explain` ran

    def __getitem__(self, key: str):
        fields = ("index", "label", "auto_label", "examples", "quantile_examples", "explanation")
        return getattr(self, key) if key in fields else self.stats[key]

    def __getattr__(self, key: str):  # statistics as attributes too: feature.max_activation, feature.frequency
        stats = self.__dict__.get("stats") or {}
        if key in stats:
            return stats[key]
        raise AttributeError(f"Feature has no attribute or statistic {key!r}; statistics: {sorted(stats)}")

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"Feature({self.index}, label={self.label!r}, frequency={s['frequency']:.3g}, "
            f"max_activation={s['max_activation']:.3g}, promoted={s.get('promoted_tokens', [])[:5]}, "
            f"examples={len(self.examples)}"
            + (f", explanation={self.explanation.get('explanation')!r}" if self.explanation else "")
            + (f", detection={self.explanation['detection']:.2f}" if self.explanation.get("detection") else "")
            + ")"
        )


class FeatureMetadata:
    r"""
    Per-feature metadata of one SAE: statistics, top contexts, logit effects and labels. Loaded lazily from a
    `features/` folder: `metadata.json` and `labels.json` at once, the stats table on first use, and a feature's
    examples by a filtered read of `examples.parquet`, never the whole file.

    Example:

    ```python
    >>> sae = SaeModel.from_pretrained("runs/default/model.layers.15")
    >>> sae.features[123]               # a `Feature`: stats, examples, logit effects, label
    >>> sae.features.set_label(123, "French words")  # written to features/labels.json at once
    >>> sae.features.stats.sort_values("frequency").tail()  # a pandas DataFrame, one row per feature
    ```
    """

    def __init__(
        self,
        stats: pa.Table | None = None,
        examples: pa.Table | None = None,
        metadata: dict | None = None,
        labels: dict[int, str] | None = None,
        path: str | os.PathLike | None = None,
        quantile_examples: pa.Table | None = None,
        random_contexts: pa.Table | None = None,
    ):
        self._stats, self._examples, self._stats_frame = stats, examples, None
        self._quantile_examples = quantile_examples
        self._random_contexts, self._explanations = random_contexts, None
        self.metadata = metadata or {}
        self.labels: dict[int, str] = dict(labels or {})
        self.path = Path(path) if path is not None else None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureMetadata":
        """Open a `features/` folder written by `save_pretrained` (the tables are read when first needed)."""
        path = Path(path)
        if not (path / METADATA).is_file():
            raise FeatureMetadataError(
                f"Expected feature metadata in {path} ({METADATA}, {STATS}, {EXAMPLES}); there is none. Collect it "
                f"with `hf-sae features --sae {path.parent}`."
            )
        labels = json.loads((path / LABELS).read_text()) if (path / LABELS).is_file() else {}
        return cls(
            metadata=json.loads((path / METADATA).read_text()),
            labels={int(k): v for k, v in labels.items()},
            path=path,
        )

    @property
    def text_note(self) -> str:
        """The text the statistics describe, in words (`held-out text (test)`, `training text (train)`); empty for
        metadata that does not record it."""
        return text_note(self.metadata)

    @property
    def stats_table(self) -> pa.Table:
        """The per-feature table as Arrow, row i being feature i."""
        if self._stats is None:
            self._stats = read_parquet(self.path / STATS)
        return self._stats

    @property
    def stats(self):
        """The per-feature table as a pandas DataFrame."""
        if self._stats_frame is None:
            self._stats_frame = self.stats_table.to_pandas()
        return self._stats_frame

    def examples_table(self, index: int | None = None) -> pa.Table:
        """Top contexts of feature `index` (of every feature when `None`), best first."""
        if self._examples is not None:
            return self._examples if index is None else self._examples.filter(pc.field("feature") == index)
        return read_parquet(self.path / EXAMPLES, filters=None if index is None else [("feature", "==", index)])

    @property
    def random_contexts(self) -> pa.Table | None:
        """Random windows of the text, with the features that fire in each (`None` in metadata made before them)."""
        if self._random_contexts is None and self.path is not None and (self.path / RANDOM_CONTEXTS).is_file():
            self._random_contexts = read_parquet(self.path / RANDOM_CONTEXTS)
        return self._random_contexts

    @property
    def explanations(self) -> dict:
        """`explanations.json` as saved: `{"features": {"<i>": {"explanation": ..., "detection": ...}}, ...}`."""
        if self._explanations is None:
            file = None if self.path is None else self.path / EXPLANATIONS
            self._explanations = json.loads(file.read_text()) if file is not None and file.is_file() else {}
        return self._explanations

    def save_explanations(self, explanations: dict) -> None:
        """Replace `explanations.json` (atomically, when on disk) by `explanations`."""
        self._explanations = explanations
        if self.path is not None:
            write_json(self.path / EXPLANATIONS, explanations, indent=1)

    def examples(self, index: int | None = None):
        """`examples_table` as a pandas DataFrame."""
        return self.examples_table(index).to_pandas()

    def quantile_examples_table(self, index: int | None = None) -> pa.Table | None:
        """Sampled contexts of feature `index` (of every feature when `None`) by activation-quantile bin, weakest
        first; `None` for metadata collected before they were."""
        if self._quantile_examples is not None:
            table = self._quantile_examples
            return table if index is None else table.filter(pc.field("feature") == index)
        if self.path is None or not (self.path / QUANTILE_EXAMPLES).is_file():
            return None
        filters = None if index is None else [("feature", "==", index)]
        return read_parquet(self.path / QUANTILE_EXAMPLES, filters=filters)

    def __len__(self) -> int:
        return int(self.metadata.get("num_latents", self.stats_table.num_rows))

    def __getitem__(self, index: int) -> Feature:
        index = self._check(index)
        stats = self.stats_table.slice(index, 1).to_pylist()[0]
        examples = self.examples_table(index).sort_by("rank").to_pylist()
        table = self.quantile_examples_table(index)
        order = [("bin", "ascending"), ("activation", "descending")]
        sampled = [] if table is None else table.sort_by(order).to_pylist()
        explanation = self.explanations.get("features", {}).get(str(index), {})
        return Feature(index, self.label(index), stats.get("auto_label", ""), stats, examples, sampled, explanation)

    def label(self, index: int) -> str:
        """The label a person set, else the automatic one where its interpretability score reaches the threshold
        recorded in the metadata, else "no clear pattern" ("" for a feature that never fired)."""
        if label := self.labels.get(index):
            return label
        auto = self.stats_table.column("auto_label")[index].as_py() or ""
        threshold = (self.metadata.get("interpretability") or {}).get("threshold")
        if threshold is None or "interpretability" not in self.stats_table.column_names:
            return auto  # metadata made before the score: its label as it was
        score = self.stats_table.column("interpretability")[index].as_py()
        if score is None or math.isnan(score):  # never fired
            return auto
        return auto if score >= threshold else NO_CLEAR_PATTERN

    def set_label(self, index: int, label: str | None) -> None:
        """Set (or with `None` / "" clear) feature `index`'s label; saved to `labels.json` at once when on disk."""
        index = self._check(index)
        if label:
            self.labels[index] = str(label)
        else:
            self.labels.pop(index, None)
        if self.path is not None:
            write_json(self.path / LABELS, {str(k): v for k, v in sorted(self.labels.items())})

    def keep_what_people_wrote(self, folder: Path) -> None:
        """Take the labels people set and the explanations written in an earlier `features/` folder, if any (in
        memory until saved)."""
        if (Path(folder) / LABELS).is_file() or (Path(folder) / EXPLANATIONS).is_file():
            earlier = FeatureMetadata.load(folder)
            self.labels = earlier.labels
            self.save_explanations(earlier.explanations)

    def _check(self, index: int) -> int:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"Feature index must be in [0, {len(self)}); got {index}.")
        return int(index)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the folder atomically: a temporary folder, then a rename; what was at `path` survives a failure."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stats, examples = self.stats_table, self.examples_table()  # read in full before `path` may be replaced
        sampled = self.quantile_examples_table()
        random_contexts, explanations = self.random_contexts, self.explanations
        with staging_folder(path) as tmp:
            pq.write_table(stats, tmp / STATS)
            pq.write_table(examples, tmp / EXAMPLES, row_group_size=2048)  # small groups: filtered reads skip most
            if sampled is not None:
                pq.write_table(sampled, tmp / QUANTILE_EXAMPLES, row_group_size=2048)
            write_json(tmp / LABELS, {str(k): v for k, v in sorted(self.labels.items())}, indent=1)
            write_json(tmp / METADATA, self.metadata, indent=1)
            if random_contexts is not None:
                pq.write_table(random_contexts, tmp / RANDOM_CONTEXTS)
            if explanations:
                write_json(tmp / EXPLANATIONS, explanations, indent=1)
            replace_folder(tmp, path)
        self.path = path
        return path


def load_features(sae_or_dir) -> FeatureMetadata:
    """The feature metadata beside an SAE: `<dir>/features/`, for a folder or an SAE loaded from one."""
    folder = Path(sae_or_dir if isinstance(sae_or_dir, str | os.PathLike) else sae_or_dir.name_or_path)
    return FeatureMetadata.load(folder if (folder / METADATA).is_file() else folder / FEATURES)


class LayerFeatures(dict):
    """A cross-layer transcoder's feature metadata, `{layer: FeatureMetadata}`, with the `features/` folder that holds
    it (`path`, None until saved) and what its layers share (`metadata`: the tokens counted, the layers)."""

    path: Path | None = None

    @property
    def metadata(self) -> dict:
        tokens = {features.metadata.get("tokens") for features in self.values()}
        return {"tokens": tokens.pop() if len(tokens) == 1 else None, "layers": sorted(self)}


def load_layer_features(folder: str | os.PathLike) -> LayerFeatures:
    """A cross-layer transcoder's feature metadata, `{layer: FeatureMetadata}`, from `<folder>/features/layer_{l}/`
    (or from that `features/` folder itself); each layer's tables are read when first needed."""
    folder = Path(folder)
    folder = folder if folder.name == FEATURES else folder / FEATURES
    layers = {}
    for path in folder.glob(LAYER_FEATURES.format("*")) if folder.is_dir() else ():
        if (index := path.name.removeprefix(LAYER_FEATURES.format(""))).isdigit():
            layers[int(index)] = FeatureMetadata.load(path)
    if not layers:
        raise FeatureMetadataError(
            f"Expected a cross-layer transcoder's feature metadata in {folder} ({LAYER_FEATURES.format('0')}/"
            f"{METADATA}, ...); there is none. Collect it with `hf-sae features --sae {folder.parent}`."
        )
    loaded = LayerFeatures(sorted(layers.items()))
    loaded.path = folder
    return loaded
