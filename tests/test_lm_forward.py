"""lm_forward.py: the one rule for which tokens count, and the LM forward shared by training, eval and features."""

import pytest
import torch
from conftest import BOS_ID, EOS_ID

from hf_sae.errors import ArgumentError
from hf_sae.fast_linear import fast_linears
from hf_sae.hookpoints import capture_activations
from hf_sae.lm_forward import activation_norms, countable, counted_tokens, run_lm, special_token_ids, within_norm
from hf_sae.precision import resolve_lm_dtype

SPECIAL = torch.tensor([BOS_ID, EOS_ID])


def test_counted_tokens_drops_position_zero_special_tokens_and_outliers():
    ids = torch.tensor([[BOS_ID, 5, 6, EOS_ID, 7, 8]])
    acts = torch.ones(1, 6, 4)
    acts[0, 4] *= 100  # a norm 100 times the median
    mask, outliers = counted_tokens(ids, [acts], SPECIAL, 10.0)
    assert mask.tolist() == [[0, 1, 1, 0, 0, 1]] and outliers == 1
    mask, outliers = counted_tokens(ids, [acts], SPECIAL, None)
    assert mask.tolist() == [[0, 1, 1, 0, 1, 1]] and outliers == 0


def test_the_median_is_per_block_so_batching_cannot_change_the_rule():
    ids = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 5, 6, 7]])
    acts = torch.ones(2, 4, 3)
    acts[1] *= 50  # the second block is loud everywhere: nothing in it is an outlier of its own block
    together, _ = counted_tokens(ids, [acts], SPECIAL, 10.0)
    apart = torch.cat([counted_tokens(ids[i : i + 1], [acts[i : i + 1]], SPECIAL, 10.0)[0] for i in range(2)])
    assert torch.equal(together, apart) and together[:, 1:].all()


def test_a_token_left_out_at_one_hookpoint_is_left_out_at_all():
    ids = torch.tensor([[BOS_ID, 5, 6, 7, 8]])
    quiet, loud = torch.ones(1, 5, 2), torch.ones(1, 5, 2)
    loud[0, 2] *= 100
    mask, outliers = counted_tokens(ids, [quiet, loud], SPECIAL, 10.0)
    assert mask.tolist() == [[0, 1, 0, 1, 1]] and outliers == 1


def test_run_lm_with_logits_gives_the_stopped_forwards_activations(tiny_llama, input_ids):
    hookpoint = tiny_llama.blocks[1]
    stopped, no_logits = run_lm(tiny_llama.model, [hookpoint], input_ids)
    full, logits = run_lm(tiny_llama.model, [hookpoint], input_ids, with_logits=True)
    assert no_logits is None and logits.shape == (*input_ids.shape, tiny_llama.model.config.vocab_size)
    assert torch.equal(stopped[hookpoint], full[hookpoint])
    with torch.no_grad(), fast_linears():  # the fp32 forward's kernel
        assert torch.equal(capture_activations(tiny_llama.model, [hookpoint], input_ids)[hookpoint], full[hookpoint])
        assert torch.equal(tiny_llama.model(input_ids).logits, logits)


def test_lm_dtype_names():
    assert resolve_lm_dtype("float32", "cpu") is None and resolve_lm_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ArgumentError, match="`lm_dtype` must be one of auto, bfloat16, float16, float32; got 'fp8'"):
        resolve_lm_dtype("fp8", "cpu")


def test_a_block_judged_in_pieces_gives_each_token_the_verdict_of_the_block_up_to_it():
    """Under `generate()` with a KV cache the hooks see the prompt, then one token at a time: each new token, judged
    against the norms before it (`earlier`), gets the verdict `counted_tokens` gives it on the block ending there."""
    torch.manual_seed(0)
    ids = torch.tensor([[BOS_ID, 5, 6, 7, EOS_ID, 8, 9, 10, 11, 12]])
    acts = torch.rand(1, 10, 4) + 1
    acts[0, 0] *= 300  # position 0, as loud as a BOS
    acts[0, 6] *= 40  # a new token far above the median so far
    acts[0, 8] *= 4  # loud, but within ten times the median
    norms = activation_norms(acts)
    assert (
        norms[0, 6] > 10 * norms[0, [1, 2, 3, 5]].median() and norms[0, 8] < 10 * norms[0, [1, 2, 3, 5, 6, 7]].median()
    )
    prompt, earlier, verdicts = 4, None, []
    for start, stop in [(0, prompt), *((t, t + 1) for t in range(prompt, 10))]:
        positions = torch.arange(start, stop)[None]
        keep = countable(ids[:, start:stop], positions, SPECIAL)
        verdicts.append(keep & within_norm(keep, norms[:, start:stop], 10.0, earlier))
        now = norms[:, start:stop].masked_fill(~keep, float("nan"))
        earlier = now if earlier is None else torch.cat([earlier, now], dim=-1)
    pieces = torch.cat(verdicts, dim=-1)
    assert pieces.tolist() == [[False, True, True, True, False, True, False, True, True, True]]
    for t in range(prompt, 10):  # each token as the last of a block that ends at it
        whole, _ = counted_tokens(ids[:, : t + 1], [acts[:, : t + 1]], SPECIAL, 10.0)
        assert whole[0, t] == pieces[0, t]


def test_special_ids_come_from_the_tokenizer_else_the_models_config(tiny_llama):
    class Tokenizer:
        all_special_ids = [7, BOS_ID, 7]

    assert special_token_ids(Tokenizer(), tiny_llama.model).tolist() == [BOS_ID, 7]
    tiny_llama.model.generation_config.eos_token_id = [EOS_ID, 42]  # a list, as chat models give
    assert special_token_ids(None, tiny_llama.model).tolist() == [0, BOS_ID, EOS_ID, 42]
