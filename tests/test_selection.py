import numpy as np
import pytest
import torch

from hf_sae import selection
from hf_sae.selection import batch_top_k, reference_batch_top_k, top_k_per_row
from hf_sae.sparse_ops import select_batch_topk, select_topk, with_auxk


def numpy_batch_top_k(pre: torch.Tensor, k: int):
    """The definition, independently: the k * N largest entries, ties to the first in row-major order."""
    flat = pre.flatten().double().numpy()
    order = np.lexsort((np.arange(flat.size), -flat))[: min(k * pre.shape[0], flat.size)]
    kept = torch.from_numpy(np.sort(order))
    return kept // pre.shape[1], kept % pre.shape[1], pre.flatten()[kept]


def assert_batch_equal(got, expected):
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


# ---- top_k_per_row --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, k",
    [
        ((64, 9216), 32),  # the default SAE shape: two levels of groups
        ((50, 4000), 3),  # three levels, and a width that GROUP does not divide (the rest joins the candidates)
        ((7, 1003), 16),
        ((5, 100), 20),  # too few groups: a plain topk
        ((3, 40), 40),  # every entry
        ((4, 640), 0),
    ],
)
def test_top_k_per_row_returns_the_entries_of_torch_topk(shape, k):
    torch.manual_seed(0)
    pre = torch.randn(shape)
    values, cols = top_k_per_row(pre, k)
    expected_values, expected_cols = pre.topk(k, dim=-1)
    assert values.shape == cols.shape == (shape[0], k)
    assert torch.equal(values.sort(-1, descending=True).values, expected_values)
    assert torch.equal(cols.sort(-1).values, expected_cols.sort(-1).values)
    assert torch.equal(pre.gather(1, cols), values)


def test_top_k_per_row_narrows_the_search_through_groups(monkeypatch):
    seen = []
    original = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, *a, **kw: seen.append(t.shape[-1]) or original(t, *a, **kw))
    top_k_per_row(torch.randn(4, 9216), 32)
    # group maxima of groups, then 32 groups of maxima, then 32 groups of latents; never the 9216 latents at once
    assert seen == [9216 // selection.GROUP**2, 32 * selection.GROUP, 32 * selection.GROUP]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_k_per_row_with_ties_keeps_the_tied_values_at_distinct_latents(dtype):
    torch.manual_seed(1)
    pre = torch.randint(0, 6, (32, 2048)).to(dtype)  # hundreds of entries tie for the k-th place
    values, cols = top_k_per_row(pre, 24)
    assert torch.equal(values.sort(-1, descending=True).values, pre.topk(24, dim=-1).values)
    assert torch.equal(pre.gather(1, cols), values)
    assert all(len(set(row.tolist())) == 24 for row in cols)


def test_top_k_per_row_ranks_nan_first_like_torch_topk():
    pre = torch.randn(3, 2048)
    pre[1, 1500] = float("nan")
    values, cols = top_k_per_row(pre, 8)
    assert torch.isnan(values[1]).sum() == 1 and 1500 in cols[1].tolist()
    assert torch.equal(values[0].sort(descending=True).values, pre[0].topk(8).values)


# ---- batch_top_k ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, k", [((256, 9216), 32), ((33, 1000), 5), ((8, 12), 3), ((4, 5), 8), ((1, 300), 7)])
def test_batch_top_k_equals_the_exact_batch_top_k(shape, k):
    torch.manual_seed(0)
    pre = torch.randn(shape)
    got = batch_top_k(pre, k)
    assert got[0].numel() == min(k * shape[0], pre.numel())
    assert_batch_equal(got, numpy_batch_top_k(pre, k))
    assert_batch_equal(reference_batch_top_k(pre, k), numpy_batch_top_k(pre, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_top_k_breaks_ties_toward_the_first_entry_in_row_major_order(dtype):
    torch.manual_seed(2)
    pre = torch.randint(0, 8, (64, 1024)).to(dtype)
    got = batch_top_k(pre, 10)
    threshold = got[2].min()
    assert (pre == threshold).sum() > (got[2] == threshold).sum()  # the tie was real: some tied entries left out
    assert_batch_equal(got, numpy_batch_top_k(pre, 10))


def test_batch_top_k_of_a_constant_batch_keeps_the_first_entries():
    pre = torch.zeros(16, 512)
    rows, cols, values = batch_top_k(pre, 4)
    assert torch.equal(rows, torch.arange(64) // 512) and torch.equal(cols, torch.arange(64))
    assert torch.equal(values, torch.zeros(64))


def test_batch_top_k_widens_the_rows_that_hold_more_than_their_candidates(monkeypatch):
    torch.manual_seed(3)
    pre = torch.randn(128, 4096)
    pre[5, :600] += 10.0  # two tokens hold all of the batch's top k * N = 1024 entries: 600 and 424
    pre[70, 1000:1700] += 6.0
    widths = []
    original = selection.top_k_per_row
    monkeypatch.setattr(selection, "top_k_per_row", lambda p, k: widths.append((p.shape[0], k)) or original(p, k))
    got = batch_top_k(pre, 8)
    first = int(selection.CANDIDATES_PER_K * 8)
    assert widths[0] == (128, first) and widths[-2:] == [(2, 16 * first), (2, 64 * first)]  # widened 4x, those only
    assert (got[0] == 5).sum() == 600 and (got[0] == 70).sum() == 424
    assert_batch_equal(got, numpy_batch_top_k(pre, 8))


def test_batch_top_k_with_nan_and_infinities_matches_the_reference():
    torch.manual_seed(4)
    pre = torch.randn(16, 600)
    pre[3, 7] = float("inf")
    pre[9, :50] = float("-inf")
    assert_batch_equal(batch_top_k(pre, 6), numpy_batch_top_k(pre, 6))
    pre[2, 100] = float("nan")  # NaN ranks first, as in torch.topk and torch.sort
    rows, cols, values = batch_top_k(pre, 6)
    expected = numpy_batch_top_k(pre.nan_to_num(nan=float("inf")), 6)
    assert torch.equal(rows, expected[0]) and torch.equal(cols, expected[1])
    assert values[(rows == 2) & (cols == 100)].isnan().all() and values.isnan().sum() == 1


# ---- the selections the SAEs use ------------------------------------------------------------------------------------


def test_select_topk_and_batch_topk_group_entries_by_token():
    torch.manual_seed(5)
    pre = torch.randn(20, 3000)
    rows, cols, values = select_topk(6)(pre)
    assert torch.equal(rows, torch.arange(20).repeat_interleave(6)) and torch.equal(pre[rows, cols], values)
    rows, cols, values = select_batch_topk(6)(pre)
    assert torch.equal(rows, rows.sort().values) and rows.numel() == 120 and torch.equal(pre[rows, cols], values)


def test_with_auxk_appends_the_top_dead_latents_of_each_token():
    torch.manual_seed(6)
    pre = torch.randn(10, 3000)
    dead = torch.rand(3000) < 0.3
    rows, cols, values = with_auxk(select_topk(4), dead, 50)(pre)
    aux_rows, aux_cols, aux_values = rows[40:], cols[40:], values[40:]
    assert torch.equal(aux_rows, torch.arange(10).repeat_interleave(50)) and dead[aux_cols].all()
    expected = pre.masked_fill(~dead, float("-inf")).topk(50, dim=-1).values
    assert torch.equal(aux_values.view(10, 50).sort(-1, descending=True).values, expected)
    assert torch.equal(pre[aux_rows, aux_cols], aux_values)
