"""fast_linear.py: oneDNN's fp32 linear where it serves, F.linear elsewhere, and the LM forward routed through it."""

import pytest
import torch
from torch import nn

import hf_sae.fast_linear as fast_linear
from hf_sae import SaeConfig, SaeModel
from hf_sae.fast_linear import fast_linears, linear, onednn_works
from hf_sae.lm_forward import run_lm

needs_onednn = pytest.mark.skipif(not onednn_works(), reason="this torch build has no working oneDNN linear")


@pytest.fixture
def onednn_calls(monkeypatch) -> list:
    """The shapes of the inputs each oneDNN call received, in order."""
    calls = []
    kernel = fast_linear._onednn_linear

    def counted(x, weight, bias):
        calls.append(tuple(x.shape))
        return kernel(x, weight, bias)

    monkeypatch.setattr(fast_linear, "_onednn_linear", counted)
    return calls


def float64_linear(x, weight, bias):
    return (x.double() @ weight.double().T + bias.double()).float()


@needs_onednn
def test_linear_takes_onednn_on_cpu_fp32_and_equals_the_product(onednn_calls):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 5, 64), torch.randn(48, 64), torch.randn(48)
    out = linear(x, weight, bias)
    assert onednn_calls == [(3, 5, 64)]
    assert out.shape == (3, 5, 48)
    torch.testing.assert_close(out, float64_linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch's note on setting the oneDNN flags
def test_linear_falls_back_to_f_linear_where_onednn_cannot_serve(onednn_calls):
    x, weight, bias = torch.randn(4, 8), torch.randn(6, 8, requires_grad=True), torch.randn(6)
    recorded = linear(x, weight, bias)  # a gradient is recorded: oneDNN has no backward
    assert torch.equal(recorded, nn.functional.linear(x, weight, bias))
    recorded.sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand(6, 8))
    weight = weight.detach()
    assert linear(x.double(), weight.double(), bias.double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, weight, bias).dtype == torch.bfloat16
    with torch.backends.mkldnn.flags(enabled=False):
        linear(x, weight, bias)
    assert onednn_calls == []
    with torch.no_grad():
        linear(x, weight, bias)
    assert onednn_calls == [(4, 8)]  # the same call with no gradient recorded does take it


@needs_onednn
def test_fast_linears_routes_every_nn_linear(onednn_calls):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4, bias=False))
    x = torch.randn(10, 16)
    with torch.no_grad():
        plain = net(x)
        with fast_linears():
            routed = net(x)
    assert onednn_calls == [(10, 16), (10, 32)]
    torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_the_fp32_lm_forward_runs_its_projections_on_onednn(onednn_calls, tiny_llama, input_ids):
    hookpoint = tiny_llama.blocks[1]
    acts = run_lm(tiny_llama.model, [hookpoint], input_ids)[0][hookpoint]
    assert len(onednn_calls) == 2 * 7  # two decoder blocks, seven projections each
    with torch.no_grad():
        plain = tiny_llama.model(input_ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(acts, plain, rtol=1e-5, atol=1e-5)
    onednn_calls.clear()
    run_lm(tiny_llama.model, [hookpoint], input_ids, autocast_dtype=torch.bfloat16)
    assert onednn_calls == []  # bf16 autocast keeps its own kernels


@needs_onednn
def test_the_sparse_training_step_encodes_on_onednn(onednn_calls):
    torch.manual_seed(0)
    sae = SaeModel(SaeConfig(d_in=16, num_latents=64, architecture="topk", k=4)).train()
    x = torch.randn(20, 16)
    out = sae(x, return_latents=True)
    out.loss.backward()
    assert onednn_calls == [(20, 16)] and sae.W_enc.grad is not None
    with torch.no_grad():
        pre = float64_linear(x - sae.b_dec, sae.W_enc, sae.b_enc)
        top = pre.topk(4)
        reference = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    torch.testing.assert_close(out.latents, reference, rtol=1e-5, atol=1e-5)
