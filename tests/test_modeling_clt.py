"""Cross-layer transcoders: shapes, the prediction and the loss against loops written out here, the activations'
sparsity, gradients through JumpReLU's threshold, and a bit-identical save / load through `AutoModel`."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_sae import CltConfig, CltModel, HookpointError, SaeConfigError

L, D, N = 3, 8, 24  # layers, width, latents per layer


def make_clt(architecture: str, seed: int = 0, **fields) -> CltModel:
    torch.manual_seed(seed)
    k = {"k": 3} if architecture != "jumprelu" else {}
    clt = CltModel(CltConfig(n_layers=L, d_in=D, num_latents=N, architecture=architecture, **k, **fields))
    with torch.no_grad():  # non-zero biases and thresholds, so that every term is exercised
        clt.b_enc.normal_(0, 0.1)
        clt.b_dec.normal_(0, 0.1)
        if architecture == "jumprelu":
            clt.threshold.uniform_(0.0, 0.2)
    return clt


def loop_prediction(clt: CltModel, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Layer t's prediction: b_dec[t] + sum over source layers s <= t of z[s] @ W_dec[s][:, t - s]."""
    out = torch.zeros(x.shape[0], L, D)
    for t in range(L):
        out[:, t] = clt.b_dec[t]
        for s in range(t + 1):
            out[:, t] += z[:, s] @ clt.W_dec[s][:, t - s, :]
    return out


def test_decoders_grow_with_the_square_of_the_layer_count():
    clt = make_clt("jumprelu")
    decoder_weights = sum(p.numel() for name, p in clt.named_parameters() if name.startswith("W_dec"))
    assert decoder_weights == N * D * L * (L + 1) // 2
    assert clt.config.num_weights() == sum(p.numel() for p in clt.state_dict().values())
    assert [tuple(p.shape) for p in clt.W_dec] == [(N, L - layer, D) for layer in range(L)]


@pytest.mark.parametrize("architecture", ["jumprelu", "topk", "batchtopk"])
def test_prediction_equals_the_written_out_sum(architecture):
    clt = make_clt(architecture)
    clt.train()
    x = torch.randn(10, L, D)
    out = clt(x, torch.randn(10, L, D))
    pre = torch.stack([x[:, layer] @ clt.W_enc[layer].T + clt.b_enc[layer] for layer in range(L)], 1)
    if architecture == "jumprelu":
        expected_z = pre * (pre > clt.threshold)
    elif architecture == "topk":
        top = pre.topk(3, dim=-1)
        expected_z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    else:  # 3 * 10 entries per layer over the whole batch
        expected_z = torch.zeros_like(pre)
        for layer in range(L):
            values = pre[:, layer].flatten()
            keep = values.topk(30).indices
            flat = torch.zeros_like(values)
            flat[keep] = values[keep].relu()
            expected_z[:, layer] = flat.reshape(10, N)
    torch.testing.assert_close(out.latents, expected_z)
    torch.testing.assert_close(out.reconstruction, loop_prediction(clt, x, expected_z), atol=1e-5, rtol=1e-5)


def test_topk_keeps_k_per_token_and_layer_and_batchtopk_k_times_tokens_per_layer():
    x = torch.randn(16, L, D) + 1.0  # mostly positive pre-activations, so ReLU drops few kept entries
    topk = make_clt("topk").eval()(x).latents
    assert ((topk != 0).sum(-1) <= 3).all() and (topk != 0).sum(-1).float().mean() > 2.5
    batch = make_clt("batchtopk").train()(x, x).latents
    per_layer = (batch != 0).sum((0, 2))
    assert (per_layer <= 3 * 16).all() and per_layer.min() > 40
    assert not ((batch != 0).sum(-1) == 3).all()  # tokens share the budget unevenly, unlike TopK


def test_batchtopk_inference_uses_each_layers_tracked_threshold():
    clt = make_clt("batchtopk").train()
    x = torch.randn(32, L, D)
    kept = clt(x, x).latents
    smallest = torch.where(kept > 0, kept, torch.inf).amin((0, 2))
    torch.testing.assert_close(clt.threshold, smallest)  # the first batch sets it
    clt.eval()
    pre = clt.pre_activation(x)
    torch.testing.assert_close(clt(x).latents, pre.relu() * (pre > clt.threshold[:, None]))


def test_loss_is_the_sum_of_per_layer_fvus_plus_the_jumprelu_penalties():
    clt = make_clt("jumprelu", sparsity_coefficient=0.01, sparsity_scale=2.0, pre_act_coefficient=0.001).train()
    x, y = torch.randn(12, L, D), torch.randn(12, L, D) * 3
    out = clt(x, y)
    fvus = [
        ((out.reconstruction[:, t] - y[:, t]) ** 2).sum(-1).mean() / ((y[:, t] - y[:, t].mean(0)) ** 2).sum(-1).mean()
        for t in range(L)
    ]
    torch.testing.assert_close(out.mse_loss, sum(fvus))
    norms = torch.stack([torch.linalg.norm(clt.W_dec[s].reshape(N, -1), dim=-1) for s in range(L)])  # (L, N)
    pre = clt.pre_activation(x)
    tanh = sum(torch.tanh(2.0 * out.latents[i] * norms).sum() for i in range(12)) / 12
    torch.testing.assert_close(out.sparsity_loss, 0.01 * tanh)
    below = ((clt.threshold - pre).relu() * norms).sum((-2, -1)).mean()
    torch.testing.assert_close(out.pre_act_loss, 0.001 * below)
    torch.testing.assert_close(out.loss, out.mse_loss + out.sparsity_loss + out.pre_act_loss)


def test_jumprelu_threshold_learns_through_its_straight_through_gradient():
    clt = make_clt("jumprelu", sparsity_coefficient=1.0).train()
    with torch.no_grad():
        clt.threshold.fill_(0.05)
    x = torch.randn(64, L, D) * 0.05  # many pre-activations within the kernel's reach of the threshold
    clt(x, torch.randn(64, L, D)).loss.backward()
    assert clt.threshold.grad is not None and clt.threshold.grad.abs().sum() > 0
    assert all(decoder.grad.abs().sum() > 0 for decoder in clt.W_dec)


@pytest.mark.parametrize("architecture", ["jumprelu", "batchtopk"])
def test_save_and_load_bit_identically_through_automodel(tmp_path, architecture):
    clt = make_clt(architecture)
    if architecture == "batchtopk":
        clt.train()(torch.randn(8, L, D), torch.randn(8, L, D))  # a tracked threshold, not the unset -1
    clt.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hf_sae_clt"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is CltModel
    state, saved = loaded.state_dict(), clt.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[name], saved[name]) for name in saved)
    x = torch.randn(4, L, D)
    assert torch.equal(loaded.eval()(x).reconstruction, clt.eval()(x).reconstruction)


def test_bad_configs_and_inputs_are_refused_naming_the_value():
    with pytest.raises(SaeConfigError, match=r"`architecture` of a cross-layer transcoder must be one of .*'gated'"):
        CltConfig(n_layers=2, d_in=4, num_latents=8, architecture="gated")
    with pytest.raises(SaeConfigError, match=r"`k` must be an integer in \[1, num_latents=8\] for topk; got None"):
        CltConfig(n_layers=2, d_in=4, num_latents=8, architecture="topk")
    with pytest.raises(SaeConfigError, match=r"`hookpoints` must name one module path per layer \(2\)"):
        CltConfig(n_layers=2, d_in=4, num_latents=8, hookpoints=["model.layers.0.mlp.input"])
    with pytest.raises(SaeConfigError, match=r"`num_latents` \(or `expansion_factor`\) must be a positive integer"):
        CltConfig(n_layers=2, d_in=4)
    assert CltConfig(n_layers=2, d_in=4, expansion_factor=2).num_latents == 8
    assert CltConfig(n_layers=2, d_in=4, num_latents=8).hookpoints == [
        "model.layers.0.mlp.input",
        "model.layers.1.mlp.input",
    ]
    clt = make_clt("topk")
    with pytest.raises(HookpointError, match=r"expects `x` of shape \(\.\.\., n_layers=3, 8\).*got shape \(5, 8\)"):
        clt(torch.randn(5, D))
    with pytest.raises(HookpointError, match=r"pass `target` of shape \(5, 3, 8\)"):
        clt.train()(torch.randn(5, L, D))
