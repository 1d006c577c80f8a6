"""How well a sparse autoencoder reconstructs activations: FVU, MSE, explained variance, cosine similarity and norm
ratio, as an `evaluate` metric.

Load it from the installed hf_sae package, offline:

    >>> import evaluate
    >>> from hf_sae.evaluation import reconstruction_metric_path
    >>> metric = evaluate.load(reconstruction_metric_path())
    >>> metric.compute(predictions=[[0.0, 1.0], [2.0, 2.0]], references=[[0.0, 0.0], [2.0, 2.0]])["fvu"]
    0.25

Every result is formed once, at the end, from float64 sums over all tokens, so it does not depend on how the tokens
were split into batches (SAELens #711: an MSE that scaled with the evaluation batch), and the variance is taken
about the mean activation (SAELens #665: explained variance measured about zero).

`evaluate` keeps every `add_batch` row (one token's vectors) in an Arrow table until `compute`. For millions of
tokens, pass their sums instead, which is what `hf_sae.evaluation` does: `compute(predictions=[], references=[],
statistics=...)`, where `statistics` holds the float64 sums listed in `STATISTICS`. Rows and sums may be mixed;
they add up.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@misc{sae_lens,
  title = {SAELens},
  author = {Bloom, Joseph and Tigges, Curt and Duong, Anthony and Chanin, David},
  year = {2024},
  howpublished = {\\url{https://github.com/decoderesearch/SAELens}},
}
@misc{gao2024scaling,
  title = {Scaling and evaluating sparse autoencoders},
  author = {Gao, Leo and others},
  year = {2024},
  eprint = {2406.04093},
  archivePrefix = {arXiv},
}
"""

_DESCRIPTION = """\
Reconstruction quality of a sparse autoencoder (SAE) over N tokens with activations x_t and reconstructions x̂_t of
width d:

- fvu: fraction of variance unexplained, sum_t |x̂_t - x_t|^2 / sum_t |x_t - mean(x)|^2 (sparsify's and Gao et al.'s
  normalised MSE; the variance is about the mean activation).
- explained_variance: 1 - fvu (SAELens >= 6.45.1 `explained_variance`).
- mse: mean squared error per element, sum_t |x̂_t - x_t|^2 / (N d), as torch's `mse_loss`.
- cosine_similarity: mean over tokens of cos(x_t, x̂_t), 0 for a zero vector (SAELens and dictionary_learning `cossim`).
- norm_ratio: mean over tokens of |x̂_t| / |x_t| (SAELens and dictionary_learning `l2_ratio`); below 1 means shrinkage.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): the SAE's reconstructions, one vector of width d per token.
    references (`list` of `list` of `float`): the activations the SAE read, in the same order.
    statistics (`dict`, *optional*): float64 sums over further tokens, keys as in `STATISTICS`
        (`num_tokens`, `sum`, `sum_squared_norm`, `sum_squared_error`, `sum_cosine_similarity`, `sum_norm_ratio`);
        `sum` is the vector sum of the activations, of width d.
Returns:
    `dict`: `fvu`, `explained_variance`, `mse`, `cosine_similarity`, `norm_ratio` and `num_tokens`.
Examples:
    >>> metric = evaluate.load(reconstruction_metric_path())
    >>> metric.compute(predictions=[[0.0, 0.0], [0.0, 0.0]], references=[[1.0, 0.0], [-1.0, 0.0]])["fvu"]
    1.0
"""

STATISTICS = (
    "num_tokens", "sum", "sum_squared_norm", "sum_squared_error", "sum_cosine_similarity", "sum_norm_ratio",
)  # fmt: skip
EPS = 1e-12  # guards the division of a zero vector's cosine and norm ratio


def statistics_of(activations: np.ndarray, reconstructions: np.ndarray) -> dict:
    """The float64 sums behind every metric, for (N, d) activations and reconstructions."""
    x = np.asarray(activations, dtype=np.float64)
    x_hat = np.asarray(reconstructions, dtype=np.float64)
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(
            f"Expected references (activations) and predictions (reconstructions) of the same shape (N, d); got "
            f"{x.shape} and {x_hat.shape}."
        )
    x_norm, x_hat_norm = np.linalg.norm(x, axis=-1), np.linalg.norm(x_hat, axis=-1)
    return {
        "num_tokens": float(x.shape[0]),
        "sum": x.sum(0),
        "sum_squared_norm": float(np.square(x).sum()),
        "sum_squared_error": float(np.square(x_hat - x).sum()),
        "sum_cosine_similarity": float(((x * x_hat).sum(-1) / np.maximum(x_norm * x_hat_norm, EPS)).sum()),
        "sum_norm_ratio": float((x_hat_norm / np.maximum(x_norm, EPS)).sum()),
    }


def metrics_from_statistics(stats: dict) -> dict:
    """Divide once: the metrics from the sums of `statistics_of` (added over any number of batches)."""
    n, total = stats["num_tokens"], np.asarray(stats["sum"], dtype=np.float64)
    if n <= 0:
        raise ValueError("No tokens to measure: pass predictions and references, or statistics with num_tokens > 0.")
    variance = stats["sum_squared_norm"] - float(np.square(total).sum()) / n  # sum_t |x_t - mean|^2
    fvu = stats["sum_squared_error"] / variance if variance > 0 else float("nan")
    return {
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "mse": stats["sum_squared_error"] / (n * total.shape[0]),
        "cosine_similarity": stats["sum_cosine_similarity"] / n,
        "norm_ratio": stats["sum_norm_ratio"] / n,
        "num_tokens": int(n),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SaeReconstruction(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
            reference_urls=["https://github.com/decoderesearch/SAELens/blob/main/sae_lens/evals.py"],
        )

    def _compute(self, predictions, references, statistics: dict | None = None):
        parts = [statistics] if statistics is not None else []
        if len(references):
            parts.append(statistics_of(np.stack(list(references)), np.stack(list(predictions))))
        if not parts:
            raise ValueError("No tokens to measure: pass predictions and references, or statistics.")
        missing = [key for key in STATISTICS if key not in parts[0]]
        if missing:
            raise ValueError(f"`statistics` lacks {missing}; it needs {list(STATISTICS)}.")
        total = {key: sum(np.asarray(part[key], dtype=np.float64) for part in parts) for key in STATISTICS}
        return metrics_from_statistics({key: value if key == "sum" else float(value) for key, value in total.items()})
