"""Feature metadata: what each SAE latent fires on, collected in one streaming pass and saved beside the SAE.

    <sae_dir>/features/    written through `feature_store.FeatureMetadata` (the layout is described there)

Memory does not grow with the number of tokens: counts, sums and histograms are running tensors, and the top contexts
and a uniform sample of contexts are running tables per feature, merged batch by batch. Statistics count the tokens an
SAE is trained on (position 0, special tokens and extreme-norm outliers are left out by `lm_forward.counted_tokens`,
as in training) and, by default, not the token right after a special one: on SmolLM2 the token after `<|im_start|>`
can fire a feature at ten times its usual peak and would set its maximum. Windows still show those tokens.

Examples by activation quantile: the uniform sample of each feature's firings is sorted and split into
`QUANTILE_BINS` equal-count bins, so each bin is a uniform draw from one decile of the firing distribution (as
delphi samples by quantile; SAEDashboard's intervals split the range [0, max] into equal widths instead, which a
stream cannot know in advance). `robust_peak`, the median of the top-N activations, is the peak to steer by.

Logit effects and nearest features: `feature_directions`. Which features fire on one text: `explain`.
"""

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.utils import logging

from .errors import HookpointError
from .feature_directions import decoder_neighbours, logit_effects
from .feature_store import METADATA, FeatureMetadata
from .interpretability import DENSE_FREQUENCY, interpretability_summary, label_score, label_tokens, show_token
from .layout import FEATURES
from .lm_forward import counted_tokens, run_lm, special_token_ids
from .modeling_sae import SaeModel
from .random_contexts import RandomContextSampler

logger = logging.get_logger(__name__)

QUANTILES = (0.5, 0.9, 0.99, 0.999)
QUANTILE_BINS = 10  # activation-quantile bins of the sampled contexts


class ContextTable:
    r"""
    Per feature, the `size` entries of largest key seen so far, each with its activation, `(block, position)` and a
    window of tokens with the feature's activation on each, merged batch by batch. With the activation as the key it
    holds the top contexts; with a uniform random key, a uniform sample of all firings (reservoir sampling by
    random priorities: the `size` largest of i.i.d. uniform keys are a uniform subset).
    """

    def __init__(self, num_latents: int, size: int, window: int):
        self.size = size
        self.keys = torch.full((num_latents, size), -torch.inf)  # (num_latents, size), descending
        self.values = torch.zeros(num_latents, size)  # the activation of each entry
        self.where = torch.full((num_latents, size, 2), -1, dtype=torch.long)  # (block, position)
        self.tokens = torch.full((num_latents, size, window), -1, dtype=torch.int32)  # -1: outside the block
        self.acts = torch.zeros(num_latents, size, window)  # the feature's activation at each window token

    def tensors(self) -> tuple[Tensor, ...]:
        return self.keys, self.values, self.where, self.tokens, self.acts

    def merge(self, keys: Tensor, rows: Tensor, cols: Tensor, values: Tensor, windows) -> None:
        """Merge the entries `(row, feature)` that beat their feature's current last key; `windows(rows, latents)`
        gives `(tokens, acts, where)` of the entries that get in."""
        size = self.size
        beats = keys > self.keys[cols, -1]
        keys, rows, cols, values = keys[beats], rows[beats], cols[beats], values[beats]
        order = keys.argsort(descending=True, stable=True)
        order = order[cols[order].argsort(stable=True)]  # grouped by feature, best first
        keys, rows, cols, values = keys[order], rows[order], cols[order], values[order]
        features, counts = torch.unique_consecutive(cols, return_counts=True)  # (U,) the features that change
        group = torch.repeat_interleave(torch.arange(len(features)), counts)
        rank = torch.arange(len(cols)) - (counts.cumsum(0) - counts)[group]
        best = rank < size
        group, rank = group[best], rank[best]
        new_keys = torch.full((len(features), size), -torch.inf).index_put_((group, rank), keys[best])
        new_values = torch.zeros(len(features), size).index_put_((group, rank), values[best])
        new_rows = torch.zeros(len(features), size, dtype=torch.long).index_put_((group, rank), rows[best])
        merged, pick = torch.cat([self.keys[features], new_keys], 1).topk(size, dim=1)  # (U, size)
        self.keys[features] = merged
        kept = pick.clamp(max=size - 1)
        self.values[features] = self.values[features].gather(1, kept)
        for table in (self.where, self.tokens, self.acts):
            table[features] = table[features].gather(1, kept[..., None].expand(-1, -1, table.shape[-1]))
        fresh, slot = ((pick >= size) & merged.isfinite()).nonzero(as_tuple=True)  # entries from this batch
        latent = features[fresh]
        self.values[latent, slot] = new_values[fresh, pick[fresh, slot] - size]
        tokens, acts, where = windows(new_rows[fresh, pick[fresh, slot] - size], latent)
        self.tokens[latent, slot], self.acts[latent, slot], self.where[latent, slot] = tokens, acts, where


class FeatureCollector:
    r"""
    Running per-feature statistics over a stream of latents, in memory fixed by the SAE's width, never by the tokens:
    counts and sums `(num_latents,)`, a histogram over `num_bins` log-spaced bins `(num_latents, num_bins)`, the
    `top_n` largest activations per feature and a uniform sample of `sample_size` of its firings (`ContextTable`s),
    each with a window of `before + 1 + after` tokens around it. Values outside `hist_range` fall into the first or
    last bin.

    >>> collector.update(sae.encode(acts), input_ids, mask)  # (batch, seq, num_latents), (batch, seq), (batch, seq)
    """

    def __init__(
        self,
        num_latents: int,
        *,
        top_n: int = 20,
        sample_size: int = 40,
        before: int = 10,
        after: int = 5,
        num_bins: int = 256,
        hist_range: tuple[float, float] = (1e-4, 1e4),
        seed: int = 0,
        vocab_size: int = 0,
    ):
        self.top_n, self.before, self.after = top_n, before, after
        self.tokens = self.blocks = 0
        low, high = np.log10(hist_range[0]), np.log10(hist_range[1])
        self.edges = torch.logspace(low, high, num_bins + 1, dtype=torch.float64)  # (num_bins + 1,)
        self.counts = torch.zeros(num_latents, dtype=torch.long)  # (num_latents,) tokens on which it fired
        self.sums = torch.zeros(num_latents, dtype=torch.float64)  # (num_latents,)
        self.histogram = torch.zeros(num_latents, num_bins, dtype=torch.long)  # (num_latents, num_bins)
        self.token_counts = torch.zeros(vocab_size, dtype=torch.long)  # (vocab,) each token id's counted occurrences
        window = before + 1 + after
        self.top = ContextTable(num_latents, top_n, window)
        self.sample = ContextTable(num_latents, sample_size, window)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def top_values(self) -> Tensor:
        """`(num_latents, top_n)` the largest activations, descending; -inf where fewer fired."""
        return self.top.keys

    def state_nbytes(self) -> int:
        """Bytes held between batches; the same after one batch as after a million."""
        tensors = (self.counts, self.sums, self.histogram, self.token_counts, *self.top.tensors(),
                   *self.sample.tensors())  # fmt: skip
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def update(self, latents: Tensor, input_ids: Tensor, mask: Tensor) -> None:
        """Add latents `(batch, seq, num_latents)` of blocks `input_ids` `(batch, seq)`; `mask` `(batch, seq)` is
        True on the tokens to count. Only the non-zero latents are touched after one pass to find them."""
        batch, seq, num_latents = latents.shape
        z = latents.detach().reshape(-1, num_latents)  # (N, L)
        counted = mask.reshape(-1).to(z.device)
        rows, cols = (z > 0).nonzero(as_tuple=True)
        rows, cols = rows[counted[rows]], cols[counted[rows]]
        values, rows, cols = z[rows, cols].float().cpu(), rows.cpu(), cols.cpu()
        self.tokens += int(counted.sum())
        tally = torch.bincount(input_ids.reshape(-1)[counted.to(input_ids.device)].cpu().long(),
                               minlength=len(self.token_counts))  # fmt: skip
        self.token_counts = nn.functional.pad(self.token_counts, (0, len(tally) - len(self.token_counts))) + tally
        self.counts += torch.bincount(cols, minlength=num_latents)
        self.sums.index_add_(0, cols, values.double())
        bins = torch.bucketize(values.double(), self.edges[1:-1])  # (entries,) in [0, num_bins)
        self.histogram.view(-1).index_add_(0, cols * self.histogram.shape[1] + bins, torch.ones_like(cols))
        ids = input_ids.reshape(-1)

        def windows(token: Tensor, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            block, position = token // seq, token % seq
            window = position[:, None] + torch.arange(-self.before, self.after + 1)  # (new, window)
            inside = (window >= 0) & (window < seq)
            flat = (block[:, None] * seq + window.clamp(0, seq - 1)).to(z.device)
            acts = z[flat, latent[:, None].to(z.device)].float() * counted[flat]  # uncounted tokens show 0
            tokens = torch.where(inside, ids[flat].cpu(), -1).int()
            return tokens, torch.where(inside, acts.cpu(), 0.0), torch.stack([block + self.blocks, position], -1)

        self.top.merge(values, rows, cols, values, windows)
        self.sample.merge(torch.rand(len(values), generator=self.generator), rows, cols, values, windows)
        self.blocks += batch

    def quantiles(self, quantiles=QUANTILES) -> Tensor:
        """`(num_latents, len(quantiles))`: for each q, the activation of rank ceil(q * count) among a feature's
        firings, placed within its histogram bin (log-linear); exact to within one bin, NaN where it never fired."""
        cum = self.histogram.cumsum(1)  # (L, num_bins)
        log_edges, columns = self.edges.log(), []
        for q in quantiles:
            rank = (q * self.counts.double()).ceil().long().clamp(min=1)  # (L,)
            b = torch.searchsorted(cum, rank[:, None]).squeeze(1).clamp(max=cum.shape[1] - 1)
            below = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)[:, None]).squeeze(1), 0)
            frac = (rank - below) / self.histogram.gather(1, b[:, None]).squeeze(1).clamp(min=1)
            value = (log_edges[b] + frac * (log_edges[b + 1] - log_edges[b])).exp()
            columns.append(torch.minimum(value, self.top_values[:, 0].double()))
        return torch.stack(columns, 1).masked_fill((self.counts == 0)[:, None], torch.nan).float()


def follows_special(input_ids: Tensor, special: Tensor) -> Tensor:
    """`(batch, seq)` True on the tokens right after a special one (BOS, a chat marker, EOS between documents):
    they often carry outlier activations that say more about the position than about the text."""
    after = torch.zeros_like(input_ids, dtype=torch.bool)
    after[:, 1:] = torch.isin(input_ids[:, :-1], special.to(input_ids.device))
    return after


def token_strings(tokenizer, ids) -> dict[int, str]:
    """Each distinct id decoded on its own (a byte piece of a longer character shows as U+FFFD)."""
    return {i: tokenizer.decode([i]) for i in sorted({int(i) for i in ids if i >= 0})}


def auto_label(peak_tokens: list[str], promoted: list[str]) -> str:
    """The peak tokens that recur in the top contexts, else the most promoted tokens (marked with an arrow)."""
    if common := label_tokens(peak_tokens):
        return " / ".join(common)
    return ("→ " + " / ".join(show_token(t) for t in promoted[:3])) if promoted else ""


def _list_array(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _strings(ids: np.ndarray, strings: dict[int, str]) -> np.ndarray:
    unique, inverse = np.unique(ids, return_inverse=True)
    return np.array([strings[int(i)] for i in unique], dtype=object)[inverse.reshape(-1)]


def _context_columns(c: FeatureCollector, table: ContextTable, latent: Tensor, slot: Tensor, strings) -> dict:
    """The columns of the contexts `(latent, slot)` of `table`: where, the peak's index, and the window."""
    tokens, acts = table.tokens[latent, slot].numpy(), table.acts[latent, slot].numpy()  # (E, window)
    inside = tokens >= 0
    return {
        "feature": pa.array(latent.int().numpy()),
        "activation": pa.array(table.values[latent, slot].numpy()),
        "block": pa.array(table.where[latent, slot, 0].numpy()),
        "position": pa.array(table.where[latent, slot, 1].numpy()),
        "peak": pa.array((c.before - (~inside[:, : c.before]).sum(1)).astype(np.int16)),
        "token_ids": _list_array(tokens[inside], inside.sum(1)),
        "tokens": _list_array(_strings(tokens[inside], strings), inside.sum(1)),
        "activations": _list_array(acts[inside], inside.sum(1)),
    }


def quantile_bins(values: Tensor, valid: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """`(latent, slot, bin)` of the valid sampled firings `values` `(L, size)`: each feature's sample sorted by
    activation and split into `bins` bins of (nearly) equal count, bin 0 the weakest."""
    order = values.masked_fill(~valid, torch.inf).argsort(dim=1, stable=True)  # valid entries first, ascending
    sampled = valid.sum(1, keepdim=True)  # (L, 1)
    rank = torch.arange(values.shape[1]).expand_as(values)
    latent, position = (rank < sampled).nonzero(as_tuple=True)
    return latent, order[latent, position], position * bins // sampled[latent, 0]


def build_tables(
    collector: FeatureCollector,
    effects: dict[str, Tensor] | None,
    strings: dict[int, str],
    quantiles=QUANTILES,
    neighbours: tuple[Tensor, Tensor] | None = None,
    bins: int = QUANTILE_BINS,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(stats, examples, quantile examples) Arrow tables from a finished collector, the logit effects and the
    decoder neighbours."""
    c = collector
    num_latents = len(c.counts)
    latent, rank = c.top.keys.isfinite().nonzero(as_tuple=True)
    examples = _context_columns(c, c.top, latent, rank, strings)
    examples = pa.table({"feature": examples.pop("feature"), "rank": pa.array(rank.short().numpy()), **examples})
    latent, slot, which = quantile_bins(c.sample.values, c.sample.keys.isfinite(), bins)
    sampled = _context_columns(c, c.sample, latent, slot, strings)
    sampled = pa.table({"feature": sampled.pop("feature"), "bin": pa.array(which.short().numpy()), **sampled})
    sampled = sampled.sort_by([("feature", "ascending"), ("bin", "ascending"), ("activation", "descending")])
    fired = c.counts > 0
    top = c.top_values.masked_fill(~c.top_values.isfinite(), torch.nan)
    columns = {
        "feature": pa.array(np.arange(num_latents, dtype=np.int32)),
        "count": pa.array(c.counts.numpy()),
        "frequency": pa.array((c.counts.double() / max(c.tokens, 1)).numpy()),
        "mean_activation": pa.array((c.sums / c.counts).float().masked_fill(~fired, torch.nan).numpy()),
        "max_activation": pa.array(c.top_values[:, 0].masked_fill(~fired, torch.nan).numpy()),
        "robust_peak": pa.array(top.nanmedian(1).values.numpy()),  # one outlier context cannot set it
    }
    for q, column in zip(quantiles, c.quantiles(quantiles).T):
        columns[f"p{100 * q:g}"] = pa.array(column.numpy())
    num_bins = c.histogram.shape[1]
    columns["histogram"] = _list_array(c.histogram.reshape(-1).numpy(), np.full(num_latents, num_bins))
    promoted = [[] for _ in range(num_latents)]
    for kind in ("promoted", "suppressed") if effects is not None else ():
        ids, n = effects[f"{kind}_ids"].numpy(), effects[f"{kind}_ids"].shape[1]
        columns[f"{kind}_token_ids"] = _list_array(ids.reshape(-1), np.full(num_latents, n))
        columns[f"{kind}_tokens"] = _list_array(_strings(ids.reshape(-1), strings), np.full(num_latents, n))
        columns[f"{kind}_logits"] = _list_array(effects[f"{kind}_logits"].numpy().reshape(-1), np.full(num_latents, n))
        promoted = columns["promoted_tokens"].to_pylist() if kind == "promoted" else promoted
    if effects is not None:
        for key in ("logit_histogram", "logit_range"):
            columns[key] = _list_array(effects[key].numpy().reshape(-1), np.full(num_latents, effects[key].shape[1]))
    if neighbours is not None:
        ids, cosines = neighbours
        columns["neighbour_ids"] = _list_array(ids.numpy().reshape(-1), np.full(num_latents, ids.shape[1]))
        columns["neighbour_cosines"] = _list_array(cosines.numpy().reshape(-1), np.full(num_latents, ids.shape[1]))
    peaks, scores = score_columns(c, strings)
    labels = [auto_label(peaks[i], promoted[i]) if fired[i] else "" for i in range(num_latents)]
    columns["auto_label"] = pa.array(labels, pa.string())
    columns |= {name: pa.array(values) for name, values in scores.items()}
    columns["dense"] = pa.array((c.counts.double() / max(c.tokens, 1) > DENSE_FREQUENCY).numpy())
    return pa.table(columns), examples, sampled


def score_columns(c: FeatureCollector, strings: dict[int, str]) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """Each feature's top-context peak tokens, and its `interpretability.label_score` as columns (NaN where it never
    fired); `strings` holds every counted token's text."""
    occurrences = Counter()
    for token in c.token_counts.nonzero().flatten().tolist():
        occurrences[show_token(strings[token])] += int(c.token_counts[token])
    top_peaks = c.top.tokens[:, :, c.before].tolist()  # (L, top_n) the token at each peak, -1 in an empty slot
    sample_peaks = c.sample.tokens[:, :, c.before].masked_fill(~c.sample.keys.isfinite(), -1).tolist()
    names = ("consistency", "label_recall", "label_precision", "interpretability")
    columns = {name: np.full(len(c.counts), np.nan, dtype=np.float32) for name in names}
    peaks = []
    for i, count in enumerate(c.counts.tolist()):
        peaks.append([strings[t] for t in top_peaks[i] if t >= 0])
        if count:
            sampled = [strings[t] for t in sample_peaks[i] if t >= 0]
            for name, value in label_score(peaks[i], sampled, count, occurrences).items():
                columns[name][i] = value
    return peaks, columns


@torch.no_grad()
def collect_feature_metadata(
    model: nn.Module,
    tokenizer,
    sae: SaeModel,
    token_batches,
    *,
    hookpoint: str | None = None,
    max_tokens: int | None = None,
    top_n: int = 20,
    before: int = 10,
    after: int = 5,
    num_logits: int = 10,
    sample_size: int = 40,
    num_neighbours: int = 10,
    skip_after_special: bool = True,
    outlier_factor: float | None = 10.0,
    autocast_dtype: torch.dtype | None = None,
    settings: dict | None = None,
) -> FeatureMetadata:
    r"""
    Stream token blocks `(batch, context)` through the LM (stopped after the hookpoint) and the SAE, and collect
    every feature's statistics, top contexts (`before` tokens before the peak, `after` after), a uniform sample of
    `sample_size` contexts split into activation-quantile bins, logit effects, decoder neighbours and automatic label.
    Counts `max_tokens` tokens at most (all when `None`); `num_logits=0` (or `num_neighbours=0`) leaves out the logit
    effects (or the decoder neighbours); with `skip_after_special` the tokens right after a special token (BOS, chat
    markers) are left out too.

    Example:

    ```python
    >>> features = collect_feature_metadata(lm, tokenizer, sae, batched(iter_blocks(blocks), 8), max_tokens=200_000)
    >>> features.save_pretrained("runs/default/model.layers.15/features")
    ```
    """
    hookpoint = hookpoint_of(sae, hookpoint)
    collector = FeatureCollector(sae.config.num_latents, top_n=top_n, sample_size=sample_size, before=before,
                                 after=after, vocab_size=len(tokenizer))  # fmt: skip
    sampler = RandomContextSampler(before + 1 + after)
    special = special_token_ids(tokenizer)
    device = getattr(model, "device", torch.device("cpu"))
    after_special = 0
    with tqdm(total=max_tokens, unit="tok", desc="Feature statistics") as bar:
        for input_ids in token_batches:
            input_ids = input_ids.to(device)
            acts = run_lm(model, [hookpoint], input_ids, autocast_dtype=autocast_dtype)[0][hookpoint]  # (B, T, d_in)
            mask, follows = counted_mask(input_ids, [acts], special, outlier_factor, skip_after_special,
                                         None if max_tokens is None else max_tokens - collector.tokens)  # fmt: skip
            after_special += follows
            latents = sae.encode(acts.to(sae.device, sae.dtype))  # (B, T, num_latents)
            collector.update(latents, input_ids, mask)
            sampler.update(latents, input_ids)
            bar.update(int(mask.sum()))
            if max_tokens is not None and collector.tokens >= max_tokens:
                break
    if not collector.tokens:
        logger.warning("No token was counted: the text made no block of this context size. Name a larger text.")
    settings = {"hookpoint": hookpoint, "top_n": top_n, "sample_size": sample_size, "context_before": before,
                "context_after": after, "outlier_factor": outlier_factor, "skip_after_special": skip_after_special,
                "after_special_tokens": after_special, "model_name_or_path": getattr(model, "name_or_path", None),
                **(settings or {})}  # fmt: skip
    effects = logit_effects(model, sae, num_logits) if num_logits else None  # 0: a measurement that needs none
    return finished_metadata(tokenizer, sae, collector, sampler, effects, num_neighbours, settings)


def counted_mask(input_ids: Tensor, acts: list[Tensor], special: Tensor, outlier_factor: float | None,
                 skip_after_special: bool, remaining: int | None) -> tuple[Tensor, int]:  # fmt: skip
    """`(mask, after_special)`: the tokens of a batch that count (`lm_forward.counted_tokens`, less the tokens right
    after a special one with `skip_after_special`, and only the first `remaining` of them) and how many were left out
    for following a special token."""
    mask, _ = counted_tokens(input_ids, acts, special, outlier_factor)
    follows = follows_special(input_ids, special) & mask if skip_after_special else torch.zeros_like(mask)
    mask &= ~follows
    if remaining is not None:  # keep exactly the first `remaining` counted tokens
        mask &= mask.flatten().cumsum(0).reshape(mask.shape) <= remaining
    return mask, int(follows.sum())


def finished_metadata(tokenizer, sae, collector: FeatureCollector, sampler: RandomContextSampler,
                      effects: dict | None, num_neighbours: int, settings: dict) -> FeatureMetadata:  # fmt: skip
    """The `FeatureMetadata` of a finished collector: its logit `effects` (`logit_effects`), the decoder neighbours
    of `sae` (anything with `W_dec` `(num_latents, d)` and a `config` naming `num_latents`), labels, and `settings`
    recorded."""
    logger.info(f"Nearest features by decoder cosine, labels and interpretability scores of {len(collector.counts):,} "
                "features...")  # fmt: skip
    neighbours = decoder_neighbours(sae.W_dec, num_neighbours) if num_neighbours else None
    tables = (collector.top.tokens, collector.sample.tokens, sampler.token_ids())
    ids = [*tables] + ([] if effects is None else [effects["promoted_ids"], effects["suppressed_ids"]])
    ids.append(collector.token_counts.nonzero())  # every counted token, for the label scores
    ids = torch.cat([t.flatten() for t in ids]).unique().tolist()
    strings = token_strings(tokenizer, ids)
    stats, examples, sampled = build_tables(collector, effects, strings, neighbours=neighbours)
    skipped = ", the tokens right after one" if settings.get("skip_after_special") else ""
    metadata = {
        "format_version": 1,
        "num_latents": sae.config.num_latents,
        "tokens": collector.tokens,
        "blocks": collector.blocks,
        "quantile_bins": QUANTILE_BINS,
        "quantiles": list(QUANTILES),
        "histogram_edges": collector.edges.tolist(),
        "counted": f"every token but position 0, special tokens{skipped} and norm outliers; activation stats over "
        "firings",
        "robust_peak": "the median of the top-N activations",
        "interpretability": interpretability_summary(
            stats.column("interpretability").to_pylist(), stats.column("frequency").to_pylist()
        ),  # fmt: skip
        "logit_effects": "W_U (g * c(W_dec[i])): final-norm gain g and centring c, not its bias or 1/rms",
        **settings,
    }
    return FeatureMetadata(
        stats, examples, metadata, quantile_examples=sampled, random_contexts=sampler.table(strings)
    )


def hookpoint_of(sae: SaeModel, hookpoint: str | None) -> str:
    if hookpoint is None and sae.config.hookpoint is None:
        raise HookpointError("The SAE's config names no hookpoint; pass `hookpoint=` (`--hookpoint`).")
    return hookpoint or sae.config.hookpoint


@torch.no_grad()
def explain(
    model: nn.Module,
    tokenizer,
    sae: SaeModel,
    text: str,
    top: int = 5,
    *,
    hookpoint: str | None = None,
    features: FeatureMetadata | None = None,
) -> list[dict]:
    r"""
    Which features fire on `text`: per token, the `top` most active features with their labels. The text is
    tokenized as training blocks are (BOS prepended, no other special tokens); BOS itself is not listed.

    Example:

    ```python
    >>> rows = explain(lm, tokenizer, sae, "The Eiffel Tower is in Paris", top=3)
    >>> rows[-1]["token"], rows[-1]["features"][0]  # ' Paris', {'feature': 4121, 'activation': 9.8, 'label': ...}
    ```
    """
    hookpoint = hookpoint_of(sae, hookpoint)
    if features is None and (Path(sae.name_or_path or "") / FEATURES / METADATA).is_file():
        features = sae.features
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    input_ids = torch.tensor([prefix + ids], device=getattr(model, "device", None))
    acts = run_lm(model, [hookpoint], input_ids)[0][hookpoint][0, len(prefix) :]  # (tokens, d_in)
    values, latents = sae.encode(acts.to(sae.device, sae.dtype)).topk(min(top, sae.config.num_latents), dim=-1)
    strings = token_strings(tokenizer, ids)
    return [
        {
            "position": t,
            "token_id": token,
            "token": strings[token],
            "features": [
                {"feature": int(i), "activation": float(v), "label": features.label(int(i)) if features else ""}
                for v, i in zip(values[t], latents[t])
                if v > 0
            ],
        }
        for t, token in enumerate(ids)
    ]
