"""Measure SAEs on held-out text: reconstruction, sparsity, and what splicing them into the LM costs it.

Over the evaluation tokens (position 0, special tokens and extreme-norm outliers left out, as training does):
`fvu` (variance about the mean), `mse`, `explained_variance`, `cosine_similarity` and `norm_ratio` come from the
`sae_reconstruction` evaluate metric (hf_sae/metrics); `l0` is the mean number of active latents per token;
`dead_fraction` / `dense_fraction` are the shares of latents that never fired / fired on more than `dense_threshold`
of the tokens. `ce_loss_clean`, `ce_loss_spliced`, `ce_loss_zero_ablated` and `ce_loss_mean_ablated` are the LM's
next-token cross-entropy (nats) as it is, with the SAE's reconstruction spliced in (no error term), and with the
activation replaced by zeros or by its mean over the evaluation tokens. `loss_recovered` is
(CE_zero - CE_spliced) / (CE_zero - CE_clean), SAELens' `ce_loss_score`, SAEBench's core "CE loss recovered" and
dictionary_learning's `frac_recovered`; `loss_recovered_mean_ablation` the same against mean ablation. `kl_div` is
KL(clean || spliced) per prediction, in nats (SAELens' `kl_div_with_sae`).

Transcoders: every reconstruction metric compares the prediction with the output hookpoint's activation (the
target), and the splice and the ablations replace that activation: CE loss with the transcoder standing in for the
MLP it predicts. Tokens count when they count at both hookpoints.

Positions: the splice and both ablations replace the activation only at the tokens the SAE is measured on; position
0 (BOS) and outliers, which it never saw in training, keep their clean activation (SAELens splices the same way with
its `ignore_tokens`). CE and KL average over the predictions made at those tokens: the logits at a kept position
t < T - 1 scored against token t + 1 of the block.

Per source: given each block's source (`sources`, e.g. the built-in corpus's `source` column; blocks hold one source
each, see `data.pack_by_source`), the report also has `per_source`: {source: the `layout.SOURCE_KEYS` metrics over
that source's tokens}, each source's FVU about its own mean, and its mean ablation with the pooled mean.

Batch size: per-token values are summed in float64 and divided once at the end; the outlier rule uses each block's
own median norm; the token budget is counted in whole blocks, chosen before batching. Results thus do not depend on
the evaluation batch size (beyond the float rounding of the LM itself).
"""

import dataclasses
import functools
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.utils import logging

from .data import (
    HELD_OUT_EVERY,
    PACK_BATCH_DOCUMENTS,
    load_text_dataset,
    load_token_blocks,
    read_blocks,
    split_label,
)
from .errors import ArgumentError, DataError
from .hookpoints import Hookpoint, register_activation_hook, resolve_hookpoints
from .layout import PER_SOURCE, QUALITY_KEYS, SOURCE_KEYS, sae_metrics, write_text
from .lm_forward import LmReading, counted_tokens, lm_kernels, run_lm
from .model_card import metrics_to_eval_results
from .modeling_clt import CltModel
from .modeling_sae import SaeModel

if TYPE_CHECKING:
    from .arguments import DataArguments

logger = logging.get_logger(__name__)

HELD_OUT_SPLIT = "test"

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "sae_reconstruction"
CE_RUNS = ("clean", "spliced", "zero_ablated", "mean_ablated")


def reconstruction_metric_path() -> str:
    """The `sae_reconstruction` metric inside the installed package: `evaluate.load(reconstruction_metric_path())`."""
    return str(METRIC_PATH)


@functools.cache
def _reconstruction_metric():
    import evaluate

    return evaluate.load(reconstruction_metric_path(), keep_in_memory=True)


# ---- the measurement ------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_saes(
    model: nn.Module,
    saes: Mapping[str, SaeModel],
    blocks: Tensor | Iterable[Tensor],
    *,
    exclude_token_ids: Iterable[int] = (),
    max_tokens: int | None = None,
    batch_size: int = 8,
    outlier_factor: float | None = 10.0,
    autocast_dtype: torch.dtype | None = None,
    lm_metrics: bool = True,
    dense_threshold: float = 0.1,
    sources: Sequence[str] | None = None,
) -> dict[str, dict]:
    r"""
    Measure SAEs on token blocks through a frozen LM; the module docstring defines every metric.

    Args:
        model (`nn.Module`): the causal LM the SAEs read (its logits are needed when `lm_metrics`).
        saes (`Mapping[str, SaeModel]`): SAEs by name; each reads `config.hookpoint`, else the hookpoint its name is.
        blocks (`Tensor` or iterable of `Tensor`): `(num_blocks, T)` token ids, or `(T,)` blocks, BOS first.
        exclude_token_ids: tokens left out like position 0, usually `tokenizer.all_special_ids`.
        max_tokens (`int`, *optional*): evaluate on the first `ceil(max_tokens / T)` blocks; all by default.
        batch_size (`int`): blocks per LM forward; the results do not depend on it.
        outlier_factor (`float`, *optional*): leave out tokens whose norm exceeds this times the block's median.
        autocast_dtype (`torch.dtype`, *optional*): run the LM under autocast in this dtype (never the SAEs).
        lm_metrics (`bool`): also measure CE loss and KL with the SAEs spliced in, one SAE at a time.
        dense_threshold (`float`): a latent firing on more than this share of the tokens counts as dense.
        sources (`Sequence[str]`, *optional*): each block's source, in the order of `blocks`: adds `per_source`.

    Returns:
        `dict[str, dict]`: a report per SAE name (keys in the module docstring, plus `eval_tokens`,
        `eval_predictions`, `outlier_tokens`, `num_latents` and `firing_density_histogram`).
    """
    batches = _batches(_take_blocks(blocks, max_tokens), sources, batch_size)
    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    hookpoints = list(dict.fromkeys(sae.config.hookpoint or name for name, sae in saes.items()))
    hookpoints += [h for h in dict.fromkeys(sae.config.output_hookpoint for sae in saes.values()) if h is not None]
    hookpoints = list(dict.fromkeys(hookpoints))
    sites = resolve_hookpoints(model, hookpoints)
    lm = _LM(model, sites, autocast_dtype)
    tallies = {name: _Tally(sae, sae.config.hookpoint or name, sites) for name, sae in saes.items()}
    kept = []  # per batch, {name: (B, T) kept tokens}, for the second pass
    for input_ids, source in tqdm(batches, desc="Evaluating SAEs", leave=False):
        input_ids = input_ids.to(model.device)
        activations, logits = run_lm(
            model, hookpoints, input_ids, autocast_dtype=autocast_dtype, with_logits=lm_metrics
        )
        kept.append({})
        for name, tally in tallies.items():
            acts = activations[tally.hookpoint]  # (B, T, d_in)
            target = activations[tally.target]  # (B, T, d_out), acts itself for an SAE
            counted = [acts] if target is acts else [acts, target]
            keep, outliers = counted_tokens(input_ids, counted, excluded, outlier_factor)
            kept[-1][name] = keep
            tally.measure(input_ids, acts, keep, outliers, logits, lm if lm_metrics else None, source, target)
    if lm_metrics:  # mean ablation needs the mean over every evaluation token, hence a second pass
        for (input_ids, source), keeps in tqdm(list(zip(batches, kept)), desc="Mean ablation", leave=False):
            input_ids = input_ids.to(model.device)
            for name, tally in tallies.items():
                tally.mean_ablate(input_ids, keeps[name], lm, source)
    return {name: tally.report(dense_threshold, lm_metrics) for name, tally in tallies.items()}


def _batches(blocks: Tensor, sources: Sequence[str] | None, batch_size: int) -> list[tuple[Tensor, str | None]]:
    """`(input_ids, source)` batches, each of one source (None without sources); the results do not depend on
    batching, so grouping by source changes nothing pooled."""
    if sources is None:
        return [(batch, None) for batch in blocks.split(batch_size)]
    sources = list(sources)[: len(blocks)]
    if len(sources) != len(blocks):
        raise DataError(f"Expected a source for each of the {len(blocks)} blocks; received {len(sources)}.")
    batches = []
    for source in dict.fromkeys(sources):
        rows = torch.tensor([i for i, s in enumerate(sources) if s == source])
        batches += [(blocks[index], source) for index in rows.split(batch_size)]
    return batches


def _take_blocks(blocks: Tensor | Iterable[Tensor], max_tokens: int | None) -> Tensor:
    """The blocks to evaluate on, `(num_blocks, T)`, chosen before batching so that batching cannot change them."""
    iterator = iter(blocks)
    first = next(iterator, None)
    if first is None:
        raise DataError("Expected token blocks to evaluate on; received none. Check the dataset and its split.")
    rest = islice(iterator, math.ceil(max_tokens / first.shape[-1]) - 1 if max_tokens else None)
    return torch.stack([first, *rest])


class _LM:
    """The frozen LM's forwards with one activation replaced."""

    def __init__(self, model: nn.Module, sites: dict[str, Hookpoint], autocast_dtype: torch.dtype | None):
        self.model, self.sites, self.dtype = model, sites, autocast_dtype

    def patched(self, site: Hookpoint, input_ids: Tensor, keep: Tensor, fill: Tensor) -> Tensor:
        """Logits with the activation at `site` replaced by `fill` at the kept tokens: a (B, T, d) tensor, a (d,)
        mean or a 0-dim zero."""
        handle = register_activation_hook(site, site.path, lambda x: torch.where(keep[..., None], fill.to(x.dtype), x))
        try:
            with lm_kernels(input_ids.device, self.dtype):
                return self.model(input_ids=input_ids, use_cache=False).logits  # (B, T, vocab)
        finally:
            handle.remove()


class _Sums:
    """Float64 sums over some evaluation tokens; the metrics are formed from them once, at the end."""

    def __init__(self, d_in: int, num_latents: int):
        from .metrics.sae_reconstruction.sae_reconstruction import STATISTICS

        self.stats = {key: np.zeros(d_in) if key == "sum" else 0.0 for key in STATISTICS}
        self.fired = torch.zeros(num_latents, dtype=torch.long)
        self.outliers = self.predictions = 0
        self.ce, self.kl = dict.fromkeys(CE_RUNS, 0.0), 0.0

    def report(self, dense_threshold: float, lm_metrics: bool) -> dict:
        n = int(self.stats["num_tokens"])
        if n == 0:
            raise DataError("No evaluation tokens were left after dropping position 0, special tokens and outliers.")
        report = _reconstruction_metric().compute(predictions=[], references=[], statistics=self.stats)
        del report["num_tokens"]
        frequency = self.fired.double() / n  # (num_latents,)
        report["l0"] = self.fired.sum().item() / n
        report["dead_fraction"] = (self.fired == 0).double().mean().item()
        report["dense_fraction"] = (frequency > dense_threshold).double().mean().item()
        if lm_metrics and self.predictions:  # none where no kept token has a next token (blocks of 2, say)
            ce = {run: self.ce[run] / self.predictions for run in CE_RUNS}
            report |= {f"ce_loss_{run}": value for run, value in ce.items()}
            report["loss_recovered"] = _recovered(ce["zero_ablated"], ce)
            report["loss_recovered_mean_ablation"] = _recovered(ce["mean_ablated"], ce)
            report |= {"kl_div": self.kl / self.predictions, "eval_predictions": self.predictions}
        report |= {"eval_tokens": n, "outlier_tokens": self.outliers, "num_latents": len(self.fired)}
        report["firing_density_histogram"] = firing_density_histogram(frequency, n)
        return report


class _Tally:
    """One SAE's sums over all the evaluation tokens (`pooled`) and over each source's (`by_source`)."""

    def __init__(self, sae: SaeModel, hookpoint: str, sites: dict[str, Hookpoint]):
        # What is measured and replaced: the input for an SAE, the output hookpoint's activation for a transcoder.
        self.target = sae.config.output_hookpoint or hookpoint
        self.sae, self.hookpoint, self.site = sae, hookpoint, sites[self.target]
        self.pooled, self.by_source = self._new(), {}

    def _new(self) -> _Sums:
        return _Sums(self.sae.config.d_out, self.sae.config.num_latents)

    def _sums(self, source: str | None) -> list[_Sums]:
        """Where a batch's sums go: the pooled ones, and its source's."""
        if source is None:
            return [self.pooled]
        return [self.pooled, self.by_source.setdefault(source, self._new())]

    def measure(
        self,
        input_ids: Tensor,
        acts: Tensor,
        keep: Tensor,
        outliers: int,
        clean_logits: Tensor | None,
        lm: "_LM | None",
        source: str | None = None,
        target: Tensor | None = None,
    ):
        """Reconstruction and sparsity of the kept tokens of acts (B, T, d_in), against `target` (B, T, d_out) for a
        transcoder; CE and KL too when given the LM, with the prediction replacing the target."""
        from .metrics.sae_reconstruction.sae_reconstruction import statistics_of

        x = acts[keep]  # (tokens, d_in)
        acts = acts if target is None else target  # what the prediction is compared with and replaces
        out = self.sae(x.to(device=self.sae.device, dtype=self.sae.dtype), return_latents=False)
        batch = statistics_of(acts[keep].double().cpu().numpy(), out.reconstruction.double().cpu().numpy())
        for sums in self._sums(source):
            sums.stats = {key: sums.stats[key] + batch[key] for key in sums.stats}
            sums.fired += out.latent_counts.cpu()
            sums.outliers += outliers
        if lm is None:
            return
        fill = torch.zeros_like(acts)
        fill[keep] = out.reconstruction.to(device=acts.device, dtype=acts.dtype)
        clean = _prediction_log_probs(clean_logits, keep)
        spliced = _prediction_log_probs(lm.patched(self.site, input_ids, keep, fill), keep)
        zero = _prediction_log_probs(lm.patched(self.site, input_ids, keep, torch.zeros((), device=acts.device)), keep)
        # KL(clean || spliced) = sum_v p_clean (log p_clean - log p_spliced), per prediction, summed in float64.
        kl = F.kl_div(spliced, clean, log_target=True, reduction="none").sum(-1).double().sum().item()
        ce = {run: _ce(log_probs, input_ids, keep) for run, log_probs in [("clean", clean), ("spliced", spliced)]}
        ce["zero_ablated"] = _ce(zero, input_ids, keep)
        for sums in self._sums(source):
            sums.ce = {run: sums.ce[run] + ce.get(run, 0.0) for run in CE_RUNS}
            sums.kl += kl
            sums.predictions += clean.shape[0]

    def mean_ablate(self, input_ids: Tensor, keep: Tensor, lm: _LM, source: str | None = None) -> None:
        stats = self.pooled.stats
        mean = torch.as_tensor(stats["sum"] / stats["num_tokens"], device=input_ids.device)  # (d_in,)
        ce = _ce(_prediction_log_probs(lm.patched(self.site, input_ids, keep, mean), keep), input_ids, keep)
        for sums in self._sums(source):
            sums.ce["mean_ablated"] += ce

    def report(self, dense_threshold: float, lm_metrics: bool) -> dict:
        report = self.pooled.report(dense_threshold, lm_metrics)
        if self.by_source:
            counted = {s: sums for s, sums in sorted(self.by_source.items()) if sums.stats["num_tokens"]}
            per_source = {s: sums.report(dense_threshold, lm_metrics) for s, sums in counted.items()}
            report[PER_SOURCE] = {s: {k: m[k] for k in SOURCE_KEYS if k in m} for s, m in per_source.items()}
        return report


def _ce(log_probs: Tensor, input_ids: Tensor, keep: Tensor) -> float:
    """Summed next-token cross-entropy (nats) of (predictions, vocab) log-probabilities at the kept positions."""
    targets = input_ids[:, 1:][keep[:, :-1]]  # the token after each kept position
    return -log_probs.gather(-1, targets[:, None]).double().sum().item()


def _recovered(ablated: float, ce: dict) -> float:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean): 1 when splicing costs nothing, 0 when it is as bad as
    ablating (SAELens' `ce_loss_score`)."""
    gap = ablated - ce["clean"]
    return (ablated - ce["spliced"]) / gap if gap else float("nan")


def _prediction_log_probs(logits: Tensor, keep: Tensor) -> Tensor:
    """(predictions, vocab) float32 log-probabilities at the kept positions that have a next token."""
    return logits[:, :-1][keep[:, :-1]].float().log_softmax(-1)


def firing_density_histogram(frequency: Tensor, num_tokens: int, bins_per_decade: int = 10) -> dict:
    """Histogram of log10(share of tokens each latent fired on) over the latents that fired; dead ones are counted
    apart, since log10(0) has no bin. The bins run from log10(1 / num_tokens), the rarest possible, to 0."""
    decades = max(math.ceil(math.log10(num_tokens)), 1)
    edges = np.linspace(-decades, 0, decades * bins_per_decade + 1)
    alive = frequency[frequency > 0].numpy()
    counts, _ = np.histogram(np.log10(alive), bins=edges)
    return {
        "log10_frequency_bin_edges": edges.round(6).tolist(),
        "counts": counts.tolist(),
        "dead": int((frequency == 0).sum()),
    }


def plot_firing_density(metrics: dict, path: Path, *, title: str, threshold: float = 0.1) -> None:
    """The firing-density histogram of one report as a PNG (matplotlib's Agg canvas; pyplot's state is untouched)."""
    from matplotlib.figure import Figure

    histogram = metrics["firing_density_histogram"]
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    axes.stairs(histogram["counts"], histogram["log10_frequency_bin_edges"], fill=True, color="tab:blue")
    axes.axvline(math.log10(threshold), color="tab:red", linestyle="--", label=f"dense (> {threshold:g} of tokens)")
    axes.set(xlabel="log10 firing frequency (share of evaluation tokens)", ylabel="latents")
    axes.set_title(
        f"{title}: {metrics['num_latents']:,} latents, {histogram['dead']:,} never fired (not shown), "
        f"{metrics['eval_tokens']:,} tokens",
        fontsize=9,
    )
    axes.legend()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    write_text(path, png.getvalue())


def report_to_eval_results(
    report: Mapping[str, Mapping],
    *,
    dataset: str | None = None,
    dataset_name: str | None = None,
    split: str | None = None,
) -> list:
    """The report's quality metrics as `huggingface_hub.EvalResult`s, for a model card's `model-index`."""
    quality = {name: {k: m[k] for k in QUALITY_KEYS if k in m} for name, m in report.items()}
    return metrics_to_eval_results(quality, dataset=dataset, dataset_name=dataset_name, split=split)


# ---- training's final report ----------------------------------------------------------------------------------------


class HeldOut(NamedTuple):
    """The held-out blocks of the training text that the final report measures, read before training."""

    input_ids: Tensor  # (num_blocks, context_size)
    sources: list[str] | None
    label: str  # the split, as the report and the card name it


def load_held_out(tokenizer, data_args: "DataArguments", max_tokens: int) -> HeldOut | None:
    """The held-out split of the training text (first `max_tokens` tokens) for training's final report, read before
    training so that a split yielding no block is refused then, with the fix, rather than after hours of training;
    None when `max_tokens` is 0 or the text has no held-out split (the report then has training metrics only)."""
    if not max_tokens:
        return None
    held_out = dataclasses.replace(data_args, dataset_split=HELD_OUT_SPLIT)
    try:
        blocks = load_token_blocks(held_out, tokenizer)
    except (DataError, ValueError, KeyError) as error:
        logger.warning(f"No held-out split {HELD_OUT_SPLIT!r} ({error}); the report has training metrics only.")
        return None
    label = ", ".join(dict.fromkeys(split_label(name, held_out) for name in data_args.dataset_names))
    try:
        input_ids, sources = read_blocks(blocks, max_tokens, data_args.source_column)
    except DataError:  # not one full block
        raise _no_held_out_block(tokenizer, held_out, label) from None
    return HeldOut(input_ids, sources, label)


def _no_held_out_block(tokenizer, held_out: "DataArguments", label: str) -> ArgumentError:
    """What to change when the held-out text makes no full block: its size says how small a context would do."""
    documents = tokens = 0
    for batch in load_text_dataset(held_out).iter(batch_size=PACK_BATCH_DOCUMENTS):
        ids = tokenizer([text or "" for text in batch[held_out.text_column]], add_special_tokens=False)["input_ids"]
        documents, tokens = documents + len(ids), tokens + sum(len(i) + 1 for i in ids if i)  # each ends with EOS
    one_stream = tokens >= 1 and len(held_out.dataset_names) == 1  # sources are packed apart: their sizes differ
    context = f"--context_size {tokens + 1} or less (its tokens fit one block), " if one_stream else ""
    return ArgumentError(
        f"The held-out text for the final report ({label}: {documents} document(s), {tokens} token(s) with EOS) "
        f"makes no full block of --context_size {held_out.context_size}, so the report would fail after training. "
        f"Pass {context}--eval_tokens 0 to train without the held-out report, or a text with a {HELD_OUT_SPLIT!r} "
        f"split or more documents (every {HELD_OUT_EVERY}th document of 'train' is held out)."
    )


def held_out_report(
    model, tokenizer, saes: Mapping[str, SaeModel], reading: LmReading, data_args: "DataArguments",
    held_out: HeldOut | None,
) -> tuple[dict, dict]:  # fmt: skip
    """FVU, L0 and dead fraction on the held-out split of the training text (training's final report), pooled and
    per source when the text names its sources, with the training text's sources and weights (only those when
    there is no such split); and each SAE's held-out firing-density histogram, for the trackers."""
    names = [name or "built-in corpus" for name in data_args.dataset_names]
    data = {"datasets": names, "dataset_weights": data_args.dataset_weights}
    if held_out is None:
        return dict.fromkeys(saes, data), {}
    if clts := {name: clt for name, clt in saes.items() if isinstance(clt, CltModel)}:
        excluded = tokenizer.all_special_ids
        report = {name: evaluate_clt(model, clt, held_out.input_ids, exclude_token_ids=excluded,
                                     batch_size=reading.batch_size, **reading.keywords)
                  for name, clt in clts.items()}  # fmt: skip
        return {name: {**m, "eval_split": held_out.label, **data} for name, m in report.items()}, {}
    report = evaluate_saes(model, saes, held_out.input_ids, exclude_token_ids=tokenizer.all_special_ids,
                           batch_size=reading.batch_size, lm_metrics=False, sources=held_out.sources,
                           **reading.keywords)  # fmt: skip
    log_per_source(report)
    histograms = {name: metrics["firing_density_histogram"] for name, metrics in report.items()}
    return {name: {**sae_metrics(m), "eval_split": held_out.label, **data} for name, m in report.items()}, histograms


def log_per_source(report: Mapping[str, Mapping]) -> None:
    for name, metrics in report.items():
        for source, values in metrics.get(PER_SOURCE, {}).items():
            numbers = ", ".join(f"{key} {value:.4g}" for key, value in values.items())
            logger.info(f"{name} on {source}: {numbers}")


# ---- cross-layer transcoders ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_clt(model: nn.Module, clt: CltModel, blocks: Tensor, *, exclude_token_ids: Iterable[int] = (),
                 batch_size: int = 8, outlier_factor: float | None = 10.0,
                 autocast_dtype: torch.dtype | None = None) -> dict:  # fmt: skip
    """A cross-layer transcoder's prediction of every layer's MLP output on token blocks `(num_blocks, T)`, with the
    token rules of `evaluate_saes` (position 0, special tokens and outliers left out, a token counting where it counts
    at every layer): per layer (`per_layer`, keyed by the LM's layer index) `fvu`, `l0` and `dead_fraction` (never
    fired), and over the layers their mean (`fvu`, `l0`) and the share of all latents never fired."""
    cfg, excluded = clt.config, torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    squared_error, sum_y, sum_y2 = (
        torch.zeros(cfg.n_layers, *shape, dtype=torch.float64) for shape in [(), (cfg.d_out,), ()]
    )
    fired, tokens = torch.zeros(cfg.n_layers, cfg.num_latents, dtype=torch.long), 0
    for input_ids in tqdm(blocks.split(batch_size), desc="Evaluating the cross-layer transcoder", leave=False):
        input_ids = input_ids.to(model.device)
        acts, _ = run_lm(model, [*cfg.hookpoints, *cfg.output_hookpoints], input_ids, autocast_dtype=autocast_dtype)
        keep, _ = counted_tokens(input_ids, acts.values(), excluded, outlier_factor)
        x, y = (
            torch.stack([acts[h][keep] for h in sites], dim=-2) for sites in (cfg.hookpoints, cfg.output_hookpoints)
        )
        out = clt(x.to(clt.device, clt.dtype), return_loss=False)
        y = y.double().cpu()
        squared_error += (out.reconstruction.double().cpu() - y).pow(2).sum((0, -1))
        sum_y, sum_y2 = sum_y + y.sum(0), sum_y2 + y.pow(2).sum((0, -1))
        fired, tokens = fired + out.latent_counts.cpu(), tokens + y.shape[0]
    if tokens == 0:
        raise DataError("No evaluation tokens were left after dropping position 0, special tokens and outliers.")
    fvu = squared_error / (sum_y2 - sum_y.pow(2).sum(-1) / tokens)  # variance about each layer's mean
    l0, dead = fired.sum(-1).double() / tokens, (fired == 0).double()
    per_layer = {str(layer): {"fvu": fvu[i].item(), "l0": l0[i].item(), "dead_fraction": dead[i].mean().item()}
                 for i, layer in enumerate(cfg.layer_indices())}  # fmt: skip
    return {"fvu": fvu.mean().item(), "l0": l0.mean().item(), "dead_fraction": dead.mean().item(),
            "eval_tokens": tokens, "per_layer": per_layer}  # fmt: skip
