"""Sparse autograd kernels for SAEs whose code is a few active latents per token (every architecture in training).

A sparse code is three flat tensors: `rows` (token), `cols` (latent) and `values`, the entries of each token next to
each other (rows sorted). The decoder and the encoder's backward touch only these entries, so a training step costs
about one dense encoder matmul and never builds the dense (N, num_latents) gradient: the approach of Gao et al. 2024
("Scaling and evaluating sparse autoencoders") and EleutherAI's sparsify, written here with `embedding_bag`, whose
bag-per-latent form of the weight gradient avoids the (entries, d_in) intermediate that `index_add` would need.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .fast_linear import linear
from .selection import batch_top_k, top_k_per_row

Select = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]  # pre-activations (N, L) -> (rows, cols, values)


class SparseCode(NamedTuple):
    """Active latents as (row, latent, value) triplets grouped by row, for `num_rows` tokens."""

    rows: Tensor
    cols: Tensor
    values: Tensor
    num_rows: int

    def dense(self, num_latents: int) -> Tensor:
        """The (num_rows, num_latents) latents with zeros elsewhere."""
        z = torch.zeros(self.num_rows, num_latents, dtype=self.values.dtype, device=self.values.device)
        return z.index_put_((self.rows, self.cols), self.values, accumulate=True)

    def counts(self, num_latents: int) -> Tensor:
        """(num_latents,) long: tokens on which each latent fired (a value other than 0)."""
        return torch.bincount(self.cols, weights=(self.values != 0).float(), minlength=num_latents).long()

    def decode(self, W_dec: Tensor) -> Tensor:  # noqa: N803
        """z @ W_dec, (num_rows, d_in)."""
        return SparseDecode.apply(self.rows, self.cols, self.values, W_dec, self.num_rows)


def sum_by_token(cols: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """out[n] = sum of weights[e] * table[cols[e]] over token n's entries, which start at offsets[n]; (N, d)."""
    return F.embedding_bag(cols, table, offsets, mode="sum", per_sample_weights=weights.to(table.dtype))


def sum_by_latent(cols: Tensor, rows: Tensor, table: Tensor, weights: Tensor, num_latents: int) -> Tensor:
    """out[i] = sum of weights[e] * table[rows[e]] over entries of latent i, as one bag per latent; (num_latents, d).
    This is the weight gradient of a sparse matmul without the (entries, d) intermediate that index_add needs."""
    order = torch.argsort(cols)
    counts = torch.bincount(cols, minlength=num_latents)
    return sum_by_token(rows[order], table, counts.cumsum(0) - counts, weights[order])


def row_offsets(rows: Tensor, num_rows: int) -> Tensor:
    """Where each token's entries start in `rows`, which is sorted (tokens without entries get empty bags)."""
    return torch.searchsorted(rows, torch.arange(num_rows, device=rows.device))


class SparseEncode(torch.autograd.Function):
    """pre = (x - b_dec) @ W_enc.T + b_enc (b_dec may be None), then `select(pre)` keeps some entries; backward
    touches only the kept entries."""

    @staticmethod
    def forward(ctx, x: Tensor, b_dec: Tensor | None, W_enc: Tensor, b_enc: Tensor, select: Select):  # noqa: N803
        centered = x if b_dec is None else x - b_dec.to(x.dtype)
        pre = linear(centered, W_enc.to(x.dtype), b_enc.to(x.dtype))  # (N, num_latents)
        rows, cols, values = select(pre)
        # Only AuxK's entries, appended after the main ones, break the grouping by token that the backward needs.
        ctx.grouped = bool((rows[1:] >= rows[:-1]).all())
        ctx.save_for_backward(centered, W_enc, rows, cols)
        ctx.mark_non_differentiable(rows, cols)
        return rows, cols, values

    @staticmethod
    def backward(ctx, _grad_rows, _grad_cols, grad_values: Tensor):
        centered, W_enc, rows, cols = ctx.saved_tensors  # noqa: N806
        needs_x, needs_b_dec, needs_W_enc, needs_b_enc, _ = ctx.needs_input_grad
        grad_x = grad_b_dec = grad_W_enc = grad_b_enc = None
        if needs_x:
            if ctx.grouped:
                by_token, grad_by_token = (rows, cols), grad_values
            else:  # regroup by token
                order = torch.argsort(rows, stable=True)
                by_token, grad_by_token = (rows[order], cols[order]), grad_values[order]
            offsets = row_offsets(by_token[0], centered.shape[0])
            grad_x = sum_by_token(by_token[1], W_enc.to(centered.dtype), offsets, grad_by_token)
        if needs_W_enc:
            grad_W_enc = sum_by_latent(cols, rows, centered, grad_values, W_enc.shape[0]).to(W_enc.dtype)
        if needs_b_enc or needs_b_dec:
            grad_b_enc = torch.zeros(W_enc.shape[0], dtype=W_enc.dtype, device=W_enc.device)
            grad_b_enc.index_add_(0, cols, grad_values.to(W_enc.dtype))
        if needs_b_dec:
            # d pre / d b_dec = -W_enc.T for every token, so its gradient is the per-latent sum through W_enc: one
            # (num_latents,) @ (num_latents, d_in) product where x's gradient would take a pass over every entry.
            grad_b_dec = -(grad_b_enc @ W_enc)
        return grad_x, grad_b_dec, grad_W_enc, grad_b_enc if needs_b_enc else None, None


class SparseDecode(torch.autograd.Function):
    """x̂ = z @ W_dec for a sparse z whose entries are grouped by token, as one `embedding_bag`."""

    @staticmethod
    def forward(ctx, rows: Tensor, cols: Tensor, values: Tensor, W_dec: Tensor, num_rows: int):  # noqa: N803
        offsets = row_offsets(rows, num_rows)
        ctx.save_for_backward(rows, cols, values, W_dec, offsets)
        return sum_by_token(cols, W_dec, offsets, values)  # (N, d_in)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rows, cols, values, W_dec, offsets = ctx.saved_tensors  # noqa: N806
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[2]:
            # embedding_bag's own per-sample-weight gradient: each grad_out[row] . W_dec[col] computed in place, where
            # gathering the (entries, d_in) rows first would cost as much memory traffic as the encoder matmul.
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out,
                W_dec.to(grad_out.dtype),
                cols,
                offsets,
                rows,
                0,  # mode 0: sum
            ).to(values.dtype)
        if ctx.needs_input_grad[3]:
            grad_W_dec = sum_by_latent(cols, rows, grad_out, values, W_dec.shape[0]).to(W_dec.dtype)
        return None, None, grad_values, grad_W_dec, None


def select_topk(k: int) -> Select:
    """Top k latents per token (Gao et al. 2024)."""

    def select(pre: Tensor):
        values, cols = top_k_per_row(pre, k)  # (N, k)
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
        return rows, cols.flatten(), values.flatten()

    return select


def select_batch_topk(k: int) -> Select:
    """Top k * N entries over a whole batch of N tokens (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"),
    grouped by token as the decoder needs."""
    return lambda pre: batch_top_k(pre, k)


def with_auxk(select: Select, dead: Tensor, k_aux: int) -> Select:
    """Append the top `k_aux` pre-activations among dead latents per token, for AuxK (Gao et al. 2024, A.2)."""
    dead_cols = dead.nonzero().squeeze(1)

    def select_both(pre: Tensor):
        rows, cols, values = select(pre)
        aux_values, aux_picked = top_k_per_row(pre[:, dead_cols], k_aux)
        aux_rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k_aux)
        return (
            torch.cat([rows, aux_rows]),
            torch.cat([cols, dead_cols[aux_picked].flatten()]),
            torch.cat([values, aux_values.flatten()]),
        )

    return select_both


def sparse_encode(
    x: Tensor,
    b_dec: Tensor | None,
    W_enc: Tensor,  # noqa: N803
    b_enc: Tensor,
    select: Select,
    k_aux: int = 0,
):
    """(main code, AuxK code or None) of a (N, d_in) batch, whose encoder input is x - b_dec (x when b_dec is None):
    the selected pre-activation entries; the last `k_aux` per token are the AuxK entries when `select` was wrapped by
    `with_auxk`."""
    rows, cols, values = SparseEncode.apply(x, b_dec, W_enc, b_enc, select)
    num_rows = x.shape[0]
    main = rows.shape[0] - k_aux * num_rows
    code = SparseCode(rows[:main], cols[:main], values[:main], num_rows)
    aux = SparseCode(rows[main:], cols[main:], values[main:], num_rows) if k_aux else None
    return code, aux
