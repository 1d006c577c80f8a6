"""Exact top-k selection over SAE pre-activations, cheaper than a plain `torch.topk` over every latent.

`top_k_per_row` (TopK) finds the k largest entries of each row without `torch.topk` visiting every entry: one
vectorised max over groups of latents points at the few groups that can hold the top k, and `torch.topk` runs on
those alone. `batch_top_k` (BatchTopK) finds the k * N largest entries of a whole (N, num_latents) batch from each
row's top few entries and a global threshold, widening the rows that might hold more, never sorting the batch.
Both return exactly the entries that a full top-k returns; see each function for ties.
"""

import torch
from torch import Tensor

# Latents per group in `top_k_per_row`: the max pass reads every entry once, `torch.topk` then sees num_latents /
# GROUP group maxima and k * GROUP candidates; 8 to 16 balances the two at SAE widths (thousands of latents, k ~ 32).
GROUP = 8
# `batch_top_k` first takes this many candidates per row for each of the k entries a row keeps on average.
CANDIDATES_PER_K = 1.5  # 2 widens fewer rows but costs more per row


def top_k_per_row(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, cols), each (N, k) in no particular order: the k largest entries of each row of `pre` (N, L).

    The values are those of `pre.topk(k)`. Where several entries tie for the k-th largest value, which of them is
    kept is unspecified, as with `torch.topk`; the cols are always k distinct latents holding the returned values.
    NaN counts as the largest value, as in `torch.topk`.

    Why it is exact: view row r as `L // GROUP` groups (group j holds latents j, j + L // GROUP, ...). A group
    whose max is below the k-th largest group max holds no top-k entry, since the k groups above it each hold a
    larger entry; so the top k lie in the k groups of largest max (plus the latents past the last whole group).
    """
    num_rows, width = pre.shape
    num_groups = width // GROUP
    if k == 0 or num_groups < 2 * k:  # the groups would not narrow the search: a plain topk is as fast
        return pre.topk(k, dim=-1, sorted=False)
    grouped = pre[:, : num_groups * GROUP].unflatten(1, (GROUP, num_groups))  # strided groups: a vectorised max
    _, top_groups = top_k_per_row(grouped.amax(1), k)  # (N, k), by the same method while the groups are many
    member = torch.arange(GROUP, device=pre.device) * num_groups
    cols = (top_groups.unsqueeze(-1) + member).flatten(1)  # (N, k * GROUP)
    if width > num_groups * GROUP:
        rest = torch.arange(num_groups * GROUP, width, device=pre.device).expand(num_rows, -1)
        cols = torch.cat([cols, rest], dim=1)
    values, picked = pre.gather(1, cols).topk(k, dim=-1, sorted=False)
    return values, cols.gather(1, picked)


def batch_top_k(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of the min(k * N, N * L) largest entries of `pre` (N, L), ordered by row then col.

    Ties for the last place go to the entry first in row-major order, so the result is exactly the first entries
    of `pre.flatten().sort(descending=True, stable=True)`, regrouped by row.

    Why it is exact: take each row's top entries (1.5 k of them) as candidates and let t be the
    (k * N)-th largest candidate. A row whose smallest candidate is below t has no other entry >= t, so when every
    row is like that (or holds all its entries) the candidates hold every entry >= t and the answer is among them.
    Other rows (those that fire far more than k latents) get wider candidates until that holds; widening only
    raises t, so the settled rows stay settled.
    """
    num_rows, width = pre.shape
    total = min(k * num_rows, pre.numel())
    if total == 0:
        empty = torch.empty(0, dtype=torch.long, device=pre.device)
        return empty, empty, pre.new_empty(0)
    settled: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows, cols, values) of candidates that are final
    rows = torch.arange(num_rows, device=pre.device)
    candidates = min(int(CANDIDATES_PER_K * k), width)
    values, cols = top_k_per_row(pre, candidates)
    while True:
        pooled = torch.cat([v.flatten() for _, _, v in settled] + [values.flatten()])
        if pooled.isnan().any():  # NaN ranks above every number; leave that to the plain reference
            return reference_batch_top_k(pre, k)
        threshold = pooled.kthvalue(pooled.numel() - total + 1).values
        widen = values.amin(1) >= threshold if candidates < width else torch.zeros_like(rows, dtype=torch.bool)
        if not widen.any():
            break
        settled.append((rows[~widen], cols[~widen], values[~widen]))
        rows, candidates = rows[widen], min(4 * candidates, width)
        values, cols = top_k_per_row(pre[rows], candidates)
    settled.append((rows, cols, values))
    rows = torch.cat([r.unsqueeze(1).expand_as(c).flatten() for r, c, _ in settled])
    cols = torch.cat([c.flatten() for _, c, _ in settled])
    values = torch.cat([v.flatten() for _, _, v in settled])
    flat = rows * width + cols
    if pre.numel() <= torch.iinfo(torch.int32).max:
        flat = flat.int()  # sorts several times faster than int64 on CPU
    keep = values > threshold
    tied = (values == threshold).nonzero().squeeze(1)
    needed = total - int(keep.sum())
    keep[tied[flat[tied].topk(needed, largest=False).indices] if needed < tied.numel() else tied] = True
    flat, order = flat[keep].sort()
    flat = flat.long()
    return flat // width, flat % width, values[keep][order]


def reference_batch_top_k(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """`batch_top_k` by a stable sort of the whole batch: the definition, and the path for NaN input."""
    num_rows, width = pre.shape
    order = pre.flatten().sort(descending=True, stable=True).indices[: min(k * num_rows, pre.numel())]
    flat = order.sort().values
    return flat // width, flat % width, pre.flatten()[flat]
