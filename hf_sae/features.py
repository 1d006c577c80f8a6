"""Feature metadata: what each SAE latent fires on, collected in one streaming pass and saved beside the SAE.

    <sae_dir>/features/    written through `feature_store.FeatureMetadata` (the layout is described there)

Memory does not grow with the number of tokens: counts, sums and histograms are running tensors, and the top contexts
are a running top-N per feature, merged batch by batch. Statistics count the tokens an SAE is trained on (position 0,
special tokens and extreme-norm outliers are left out by `lm_forward.counted_tokens`, as in training); windows still
show those tokens.

Logit effects. Feature i writes the direction d = W_dec[i] into the residual stream. At a token with residual x the
final norm computes g * c(x) / rms(c(x)) + b, with c the mean-centring of LayerNorm (identity for RMSNorm); the
change it passes on for a small d is, to first order, g * c(d) / rms(c(x)). The factor 1 / rms(c(x)) is one positive
number per token, the same for every feature and vocabulary entry, so it rescales but never reorders; the bias b does
not depend on d. The logit effect is therefore W_U (g * c(d)): the norm's gain (read off the norm module itself, so
Gemma's 1 + weight is right too) and its centring are applied, its bias and the per-token scale are not.
"""

from collections import Counter

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.utils import logging

from .errors import HookpointError
from .feature_store import FeatureMetadata
from .lm_forward import counted_tokens, run_lm, special_token_ids
from .modeling_sae import SaeModel

logger = logging.get_logger(__name__)

QUANTILES = (0.5, 0.9, 0.99)


class FeatureCollector:
    r"""
    Running per-feature statistics over a stream of latents, in memory fixed by the SAE's width, never by the tokens:
    counts and sums `(num_latents,)`, a histogram over `num_bins` log-spaced bins `(num_latents, num_bins)`, and the
    `top_n` largest activations per feature, each with a window of `before + 1 + after` tokens around it
    `(num_latents, top_n, window)`. Values outside `hist_range` fall into the first or last bin.

    >>> collector.update(sae.encode(acts), input_ids, mask)  # (batch, seq, num_latents), (batch, seq), (batch, seq)
    """

    def __init__(
        self,
        num_latents: int,
        *,
        top_n: int = 20,
        before: int = 10,
        after: int = 5,
        num_bins: int = 256,
        hist_range: tuple[float, float] = (1e-4, 1e4),
    ):
        self.top_n, self.before, self.after = top_n, before, after
        self.tokens = self.blocks = 0
        low, high = np.log10(hist_range[0]), np.log10(hist_range[1])
        self.edges = torch.logspace(low, high, num_bins + 1, dtype=torch.float64)  # (num_bins + 1,)
        self.counts = torch.zeros(num_latents, dtype=torch.long)  # (num_latents,) tokens on which it fired
        self.sums = torch.zeros(num_latents, dtype=torch.float64)  # (num_latents,)
        self.histogram = torch.zeros(num_latents, num_bins, dtype=torch.long)  # (num_latents, num_bins)
        self.top_values = torch.full((num_latents, top_n), -torch.inf)  # (num_latents, top_n), descending
        self.top_where = torch.full((num_latents, top_n, 2), -1, dtype=torch.long)  # (block, position) of each peak
        window = before + 1 + after
        self.top_tokens = torch.full((num_latents, top_n, window), -1, dtype=torch.int32)  # -1: outside the block
        self.top_acts = torch.zeros(num_latents, top_n, window)  # the feature's activation at each window token

    def state_nbytes(self) -> int:
        """Bytes held between batches; the same after one batch as after a million."""
        tensors = (
            self.counts,
            self.sums,
            self.histogram,
            self.top_values,
            self.top_where,
            self.top_tokens,
            self.top_acts,
        )
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
        self.counts += torch.bincount(cols, minlength=num_latents)
        self.sums.index_add_(0, cols, values.double())
        bins = torch.bucketize(values.double(), self.edges[1:-1])  # (entries,) in [0, num_bins)
        self.histogram.view(-1).index_add_(0, cols * self.histogram.shape[1] + bins, torch.ones_like(cols))
        self._update_top(rows, cols, values, z, counted, input_ids.reshape(-1), seq)
        self.blocks += batch

    def _update_top(
        self, rows: Tensor, cols: Tensor, values: Tensor, z: Tensor, counted: Tensor, ids: Tensor, seq: int
    ) -> None:
        """Merge the entries that beat their feature's current N-th best into the running top N."""
        top_n = self.top_n
        beats = values > self.top_values[cols, -1]
        rows, cols, values = rows[beats], cols[beats], values[beats]
        order = values.argsort(descending=True, stable=True)
        order = order[cols[order].argsort(stable=True)]  # grouped by feature, best first
        rows, cols, values = rows[order], cols[order], values[order]
        features, counts = torch.unique_consecutive(cols, return_counts=True)  # (U,) the features that change
        group = torch.repeat_interleave(torch.arange(len(features)), counts)
        rank = torch.arange(len(cols)) - (counts.cumsum(0) - counts)[group]
        best = rank < top_n
        group, rank = group[best], rank[best]
        new_values = torch.full((len(features), top_n), -torch.inf).index_put_((group, rank), values[best])
        new_rows = torch.zeros(len(features), top_n, dtype=torch.long).index_put_((group, rank), rows[best])
        merged, pick = torch.cat([self.top_values[features], new_values], 1).topk(top_n, dim=1)  # (U, top_n)
        self.top_values[features] = merged
        kept = pick.clamp(max=top_n - 1)[..., None]
        for name in ("top_where", "top_tokens", "top_acts"):
            table = getattr(self, name)
            table[features] = table[features].gather(1, kept.expand(-1, -1, table.shape[-1]))
        fresh, slot = ((pick >= top_n) & merged.isfinite()).nonzero(as_tuple=True)  # entries from this batch
        token = new_rows[fresh, pick[fresh, slot] - top_n]  # (new,) index into the batch's flat tokens
        latent, block, position = features[fresh], token // seq, token % seq
        window = position[:, None] + torch.arange(-self.before, self.after + 1)  # (new, window)
        inside = (window >= 0) & (window < seq)
        flat = (block[:, None] * seq + window.clamp(0, seq - 1)).to(z.device)
        acts = z[flat, latent[:, None].to(z.device)].float() * counted[flat]  # uncounted tokens show 0
        self.top_tokens[latent, slot] = torch.where(inside, ids[flat].cpu(), -1).int()
        self.top_acts[latent, slot] = torch.where(inside, acts.cpu(), 0.0)
        self.top_where[latent, slot] = torch.stack([block + self.blocks, position], -1)

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


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the unembedding (`model.norm`, `transformer.ln_f`, ...), if any."""
    base = getattr(model, "base_model", model)
    for name in ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f"):
        if isinstance(module := getattr(base, name, None), nn.Module):
            return module
    return None


@torch.no_grad()
def norm_gain(norm: nn.Module | None, width: int) -> tuple[Tensor, bool]:
    """(gain `(width,)`, whether it mean-centres) of an elementwise-affine norm, read by running it on probes."""
    if norm is None:
        return torch.ones(width), False
    param = next(norm.parameters(), torch.empty(0))
    run = lambda x: norm(x.to(param.device, param.dtype)[None])[0].float().cpu()  # noqa: E731
    probe = torch.tensor([(-1.0) ** i for i in range(width)])  # mean 0, no zero entry
    if width % 2:
        probe[:3] = torch.tensor([2.0, -1.0, -1.0])
    bias = run(torch.zeros(width))
    gain = (run(100 * probe) - bias) * probe.pow(2).mean().sqrt() / probe
    constant = run(torch.full((width,), 100.0)) - bias  # the gain for RMSNorm, zero for LayerNorm
    return gain, bool(constant.abs().max() < 1e-3 * gain.abs().max())


@torch.no_grad()
def logit_effects(model: nn.Module, sae: SaeModel, top: int = 10, chunk: int = 512) -> dict[str, Tensor] | None:
    r"""
    The tokens each feature's direction promotes and suppresses most: W_U (g * c(W_dec[i])), with the final norm's
    gain g and centring c (see the module docstring). Returns `promoted_ids`, `promoted_logits`, `suppressed_ids`,
    `suppressed_logits`, each `(num_latents, top)`, or `None` when the SAE's width is not the unembedding's.
    """
    unembed = model.get_output_embeddings().weight  # (vocab, d_model)
    if unembed.shape[1] != sae.config.d_in:
        logger.info("No logit effects: the SAE's width %d is not the model's %d.", sae.config.d_in, unembed.shape[1])
        return None
    gain, centres = norm_gain(final_norm(model), sae.config.d_in)
    out: dict[str, list[Tensor]] = {
        key: [] for key in ("promoted_ids", "promoted_logits", "suppressed_ids", "suppressed_logits")
    }
    for start in range(0, sae.config.num_latents, chunk):
        d = sae.W_dec[start : start + chunk].detach().float().cpu()  # (chunk, d_in)
        d = d - d.mean(-1, keepdim=True) if centres else d
        logits = (d * gain) @ unembed.detach().float().cpu().T  # (chunk, vocab)
        for kind, largest in (("promoted", True), ("suppressed", False)):
            values, ids = logits.topk(min(top, logits.shape[1]), dim=1, largest=largest)
            out[f"{kind}_ids"].append(ids.int())
            out[f"{kind}_logits"].append(values)
    return {key: torch.cat(parts) for key, parts in out.items()}


def token_strings(tokenizer, ids) -> dict[int, str]:
    """Each distinct id decoded on its own (a byte piece of a longer character shows as U+FFFD)."""
    return {i: tokenizer.decode([i]) for i in sorted({int(i) for i in ids if i >= 0})}


def show_token(text: str) -> str:
    """A token as a label shows it: trimmed, with newlines and blanks made visible."""
    stripped = text.strip()
    return stripped if stripped else ("⏎" if "\n" in text else "␣")


def auto_label(peak_tokens: list[str], promoted: list[str]) -> str:
    """The peak tokens that recur in the top contexts, else the most promoted tokens (marked with an arrow)."""
    common = [token for token, n in Counter(map(show_token, peak_tokens)).most_common(3) if n >= 2]
    if common:
        return " / ".join(common)
    return ("→ " + " / ".join(show_token(t) for t in promoted[:3])) if promoted else ""


def _list_array(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _strings(ids: np.ndarray, strings: dict[int, str]) -> np.ndarray:
    unique, inverse = np.unique(ids, return_inverse=True)
    return np.array([strings[int(i)] for i in unique], dtype=object)[inverse.reshape(-1)]


def build_tables(
    collector: FeatureCollector, effects: dict[str, Tensor] | None, strings: dict[int, str], quantiles=QUANTILES
) -> tuple[pa.Table, pa.Table]:
    """(stats, examples) Arrow tables from a finished collector and the logit effects."""
    c = collector
    num_latents, top_n, window = c.top_tokens.shape
    valid = c.top_values.isfinite()  # (L, top_n)
    latent, rank = valid.nonzero(as_tuple=True)
    tokens, acts = c.top_tokens[latent, rank].numpy(), c.top_acts[latent, rank].numpy()  # (E, window)
    inside = tokens >= 0
    examples = pa.table(
        {
            "feature": pa.array(latent.int().numpy()),
            "rank": pa.array(rank.short().numpy()),
            "activation": pa.array(c.top_values[latent, rank].numpy()),
            "block": pa.array(c.top_where[latent, rank, 0].numpy()),
            "position": pa.array(c.top_where[latent, rank, 1].numpy()),
            "peak": pa.array((c.before - (~inside[:, : c.before]).sum(1)).astype(np.int16)),
            "token_ids": _list_array(tokens[inside], inside.sum(1)),
            "tokens": _list_array(_strings(tokens[inside], strings), inside.sum(1)),
            "activations": _list_array(acts[inside], inside.sum(1)),
        }
    )
    fired = c.counts > 0
    columns = {
        "feature": pa.array(np.arange(num_latents, dtype=np.int32)),
        "count": pa.array(c.counts.numpy()),
        "frequency": pa.array((c.counts.double() / max(c.tokens, 1)).numpy()),
        "mean_activation": pa.array((c.sums / c.counts).float().masked_fill(~fired, torch.nan).numpy()),
        "max_activation": pa.array(c.top_values[:, 0].masked_fill(~fired, torch.nan).numpy()),
    }
    for q, column in zip(quantiles, c.quantiles(quantiles).T):
        columns[f"p{100 * q:g}"] = pa.array(column.numpy())
    bins = c.histogram.shape[1]
    columns["histogram"] = _list_array(c.histogram.reshape(-1).numpy(), np.full(num_latents, bins))
    promoted = [[] for _ in range(num_latents)]
    for kind in ("promoted", "suppressed") if effects is not None else ():
        ids, n = effects[f"{kind}_ids"].numpy(), effects[f"{kind}_ids"].shape[1]
        columns[f"{kind}_token_ids"] = _list_array(ids.reshape(-1), np.full(num_latents, n))
        columns[f"{kind}_tokens"] = _list_array(_strings(ids.reshape(-1), strings), np.full(num_latents, n))
        columns[f"{kind}_logits"] = _list_array(effects[f"{kind}_logits"].numpy().reshape(-1), np.full(num_latents, n))
        promoted = columns["promoted_tokens"].to_pylist() if kind == "promoted" else promoted
    peaks = c.top_tokens[:, :, c.before].numpy()  # (L, top_n) the token at each peak
    labels = [
        auto_label([strings[int(t)] for t in row if t >= 0], promoted[i]) if fired[i] else ""
        for i, row in enumerate(peaks)
    ]
    columns["auto_label"] = pa.array(labels, pa.string())
    return pa.table(columns), examples


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
    outlier_factor: float | None = 10.0,
    autocast_dtype: torch.dtype | None = None,
    settings: dict | None = None,
) -> FeatureMetadata:
    r"""
    Stream token blocks `(batch, context)` through the LM (stopped after the hookpoint) and the SAE, and collect
    every feature's statistics, top contexts (`before` tokens before the peak, `after` after), logit effects and
    automatic label. Counts `max_tokens` tokens at most (all when `None`).

    Example:

    ```python
    >>> features = collect_feature_metadata(lm, tokenizer, sae, batched(iter_blocks(blocks), 8), max_tokens=200_000)
    >>> features.save_pretrained("runs/default/model.layers.15/features")
    ```
    """
    hookpoint = hookpoint_of(sae, hookpoint)
    collector = FeatureCollector(sae.config.num_latents, top_n=top_n, before=before, after=after)
    special = special_token_ids(tokenizer)
    device = getattr(model, "device", torch.device("cpu"))
    with tqdm(total=max_tokens, unit="tok", desc="Feature statistics") as bar:
        for input_ids in token_batches:
            input_ids = input_ids.to(device)
            acts = run_lm(model, [hookpoint], input_ids, autocast_dtype=autocast_dtype)[0][hookpoint]  # (B, T, d_in)
            mask, _ = counted_tokens(input_ids, [acts], special, outlier_factor)
            if max_tokens is not None:  # keep exactly the first `max_tokens` counted tokens
                mask &= mask.flatten().cumsum(0).reshape(mask.shape) <= max_tokens - collector.tokens
            collector.update(sae.encode(acts.to(sae.device, sae.dtype)), input_ids, mask)
            bar.update(int(mask.sum()))
            if max_tokens is not None and collector.tokens >= max_tokens:
                break
    effects = logit_effects(model, sae, num_logits)
    ids = [collector.top_tokens] + ([] if effects is None else [effects["promoted_ids"], effects["suppressed_ids"]])
    ids = torch.cat([t.flatten() for t in ids]).unique().tolist()
    stats, examples = build_tables(collector, effects, token_strings(tokenizer, ids))
    metadata = {
        "format_version": 1,
        "num_latents": sae.config.num_latents,
        "hookpoint": hookpoint,
        "model_name_or_path": getattr(model, "name_or_path", None),
        "tokens": collector.tokens,
        "blocks": collector.blocks,
        "top_n": top_n,
        "context_before": before,
        "context_after": after,
        "outlier_factor": outlier_factor,
        "quantiles": list(QUANTILES),
        "histogram_edges": collector.edges.tolist(),
        "counted": "every token but position 0, special tokens and norm outliers; activation stats over firings",
        "logit_effects": "W_U (g * c(W_dec[i])): final-norm gain g and centring c, not its bias or 1/rms",
        **(settings or {}),
    }
    return FeatureMetadata(stats, examples, metadata)


def hookpoint_of(sae: SaeModel, hookpoint: str | None) -> str:
    if hookpoint is None and sae.config.hookpoint is None:
        raise HookpointError("The SAE's config names no hookpoint; pass `hookpoint=` (`--hookpoint`).")
    return hookpoint or sae.config.hookpoint
