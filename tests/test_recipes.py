"""The recipes of docs/hooks.md for other interpretability libraries on tiny random LMs: nnsight, TransformerLens."""

import pytest
import torch
from conftest import VOCAB_SIZE, make_tiny_lm

from hf_sae import SaeConfig, SaeHooks, SaeModel
from hf_sae.hookpoints import capture_activations

nnsight = pytest.importorskip("nnsight")
transformer_lens = pytest.importorskip("transformer_lens")


def make_sae(d_in: int, hookpoint: str) -> SaeModel:
    sae = SaeModel(SaeConfig(d_in=d_in, num_latents=40, architecture="topk", k=5, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_dec.normal_()  # a nonzero decoder bias, so an input shifted by its mean cannot give the same latents
    return sae.eval()


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(3, VOCAB_SIZE, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tokenizer(tmp_path):
    """A word-level tokenizer for the tiny vocabulary, saved and loaded as TransformerLens loads one."""
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocabulary = {f"w{i}": i for i in range(VOCAB_SIZE)}
    words = Tokenizer(models.WordLevel(vocabulary, unk_token="w3"))
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="w0", bos_token="w1", eos_token="w2").save_pretrained(
        tmp_path / "tokenizer"
    )
    return AutoTokenizer.from_pretrained(tmp_path / "tokenizer")


def test_nnsight_encodes_a_layer_inside_a_trace_and_splices_like_sae_hooks(input_ids):
    lm = make_tiny_lm("llama").model
    sae = make_sae(24, "model.layers.1")
    expected = sae.encode(capture_activations(lm, ["model.layers.1"], input_ids)["model.layers.1"])
    with SaeHooks(lm, {"model.layers.1": sae}, all_tokens=True).splice(error_term=False):
        spliced = lm(input_ids).logits

    traced = nnsight.NNsight(lm)
    with traced.trace(input_ids), torch.no_grad():
        layer = traced.model.layers[1]
        latents = sae.encode(layer.output).save()
        layer.output = sae(layer.output).reconstruction  # the reconstruction stands in for the layer
        logits = traced.lm_head.output.save()
    assert expected.count_nonzero() > 0 and torch.equal(latents, expected)
    assert not torch.allclose(logits, lm(input_ids).logits)  # the splice happened
    torch.testing.assert_close(logits, spliced, rtol=0, atol=1e-6)


def bridge(family: str, tokenizer, processing: str):
    lm = make_tiny_lm(family).model
    model = transformer_lens.TransformerBridge.boot_transformers(family, hf_model=lm, tokenizer=tokenizer)
    if processing != "none":
        model.enable_compatibility_mode(disable_warnings=True, no_processing=processing == "no_processing")
    return lm, model


@pytest.mark.parametrize("family, processing", [("llama", "none"), ("gpt2", "none"), ("gpt2", "no_processing")])
def test_transformer_lens_without_weight_processing_gives_the_layers_activations(tokenizer, input_ids, family,
                                                                                 processing):  # fmt: skip
    hookpoint = {"llama": "model.layers.1", "gpt2": "transformer.h.1"}[family]
    lm, model = bridge(family, tokenizer, processing)
    sae = make_sae(lm.config.hidden_size, hookpoint)
    _, cache = model.run_with_cache(input_ids)
    residual = capture_activations(lm, [hookpoint], input_ids)[hookpoint]
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], residual, rtol=0, atol=1e-6)
    assert torch.equal(sae.encode(cache["blocks.1.hook_resid_post"]).ne(0), sae.encode(residual).ne(0))

    spliced = model.run_with_hooks(
        input_ids, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: sae(x).reconstruction)]
    )
    with SaeHooks(lm, {hookpoint: sae}, all_tokens=True).splice(error_term=False):
        torch.testing.assert_close(spliced, lm(input_ids).logits, rtol=0, atol=1e-5)


def test_transformer_lens_weight_processing_centres_a_layernorm_models_residual_stream(tokenizer, input_ids):
    """HookedTransformer's numerics fold LayerNorm and centre the weights that write to the residual stream, so on a
    LayerNorm model (GPT-2) each position's residual has its mean removed: not what an HF-trained SAE read."""
    lm, model = bridge("gpt2", tokenizer, "weight_processing")
    _, cache = model.run_with_cache(input_ids)
    unprocessed = make_tiny_lm("gpt2").model  # the same seeded weights: processing rewrote `lm`'s in place
    assert not torch.equal(lm.transformer.h[1].mlp.c_proj.weight, unprocessed.transformer.h[1].mlp.c_proj.weight)
    residual = capture_activations(unprocessed, ["transformer.h.1"], input_ids)["transformer.h.1"]
    processed = cache["blocks.1.hook_resid_post"]
    assert (processed - residual).abs().max() > 1e-3
    torch.testing.assert_close(processed, residual - residual.mean(-1, keepdim=True), rtol=0, atol=1e-5)
