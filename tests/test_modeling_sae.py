import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from transformers import AutoModel

from hf_sae import ARCHITECTURES, SaeConfig, SaeModel, WeightsError


def make_sae(architecture: str, d_in: int = 16, num_latents: int = 64, seed: int = 0, **kwargs) -> SaeModel:
    torch.manual_seed(seed)
    k = kwargs.pop("k", 4 if ARCHITECTURES[architecture].uses_k else None)
    if architecture == "matryoshka_batchtopk":
        kwargs.setdefault("matryoshka_group_sizes", [num_latents // 4, num_latents - num_latents // 4])
    return SaeModel(SaeConfig(d_in=d_in, num_latents=num_latents, architecture=architecture, k=k, **kwargs))


def train_steps(sae: SaeModel, data: torch.Tensor, steps: int, lr: float = 1e-2) -> None:
    sae.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        sae(data[step % len(data)]).loss.backward()
        optimizer.step()


# ---- a hand-set SAE against hand-computed outputs -------------------------------------------------------


def hand_set(architecture: str, **kwargs) -> SaeModel:
    sae = SaeModel(SaeConfig(d_in=2, num_latents=3, architecture=architecture, **kwargs))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]))
        sae.b_dec.copy_(torch.tensor([0.5, -0.5]))
    return sae


X = torch.tensor([[1.5, 0.5]])  # x - b_dec = [1, 1], so pre = [1, 0, 2.5]


def test_hand_set_relu_sae_gives_hand_computed_output_and_loss():
    sae = hand_set("relu", sparsity_coefficient=0.1)
    out = sae(X, return_loss=True)
    torch.testing.assert_close(out.latents, torch.tensor([[1.0, 0.0, 2.5]]))
    torch.testing.assert_close(out.reconstruction, torch.tensor([[2.75, 0.75]]))
    torch.testing.assert_close(out.mse_loss, torch.tensor(1.5625 + 0.0625))
    torch.testing.assert_close(out.sparsity_loss, torch.tensor(0.1 * (1.0 + 2.5 * math.sqrt(0.5))))
    torch.testing.assert_close(out.loss, out.mse_loss + out.sparsity_loss)
    assert out.l0.item() == 2


def test_hand_set_topk_jumprelu_and_gated():
    topk = hand_set("topk", k=1)
    torch.testing.assert_close(topk(X).reconstruction, torch.tensor([[1.75, 0.75]]))
    torch.testing.assert_close(topk.encode(X), torch.tensor([[0.0, 0.0, 2.5]]))

    jumprelu = hand_set("jumprelu")
    with torch.no_grad():
        jumprelu.threshold.copy_(torch.tensor([1.5, 0.1, 2.0]))
    torch.testing.assert_close(jumprelu.encode(X), torch.tensor([[0.0, 0.0, 2.5]]))

    gated = hand_set("gated")
    with torch.no_grad():
        gated.r_mag.copy_(torch.tensor([0.0, math.log(2.0), 0.0]))
        gated.b_mag.copy_(torch.tensor([0.0, 0.0, -1.0]))
    # gate pre = [1, 0, 2.5] -> open for latents 0 and 2; magnitudes = [1, 2, 1]
    torch.testing.assert_close(gated.encode(X), torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(gated(X).reconstruction, torch.tensor([[2.0, 0.0]]))


def test_no_b_dec_subtraction_when_configured_off():
    sae = hand_set("relu", apply_b_dec_to_input=False)
    # pre = x @ W_enc.T + b_enc = [1.5, -0.5, 2.5]
    torch.testing.assert_close(sae.encode(X), torch.tensor([[1.5, 0.0, 2.5]]))


# ---- sparsity behaviour per architecture -------------------------------------------------------------------


def test_topk_has_exactly_k_nonzeros_per_token_for_any_leading_shape():
    sae = make_sae("topk", k=5)
    x = torch.randn(3, 7, 16)
    out = sae(x)
    assert out.latents.shape == (3, 7, 64)
    assert ((out.latents != 0).sum(-1) == 5).all()
    assert torch.equal(out.latents, sae.encode(x))
    torch.testing.assert_close(out.reconstruction, sae.decode(out.latents))
    # the kept latents are the k largest pre-activations
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    expected = torch.zeros_like(pre).scatter(-1, pre.topk(5).indices, pre.topk(5).values.relu())
    torch.testing.assert_close(out.latents, expected)


def test_batchtopk_averages_k_per_token_and_its_threshold_reproduces_l0_on_held_out_data():
    sae = make_sae("batchtopk", k=6)
    torch.manual_seed(1)
    train = torch.randn(40, 256, 16) * torch.linspace(0.5, 2.0, 16)
    sae.train()
    with torch.no_grad():
        for batch in train:
            out = sae(batch, return_loss=False)
            assert out.l0.item() == 6  # k * batch entries over the batch, unevenly per token
            per_token = (out.latents != 0).sum(-1)
            assert per_token.min() < 6 < per_token.max()
    assert sae.threshold.item() > 0
    sae.eval()
    held_out = torch.randn(4096, 16) * torch.linspace(0.5, 2.0, 16)
    l0 = (sae.encode(held_out) != 0).sum(-1).float().mean().item()
    assert abs(l0 - 6) / 6 < 0.10, l0


def test_jumprelu_thresholds_learn_and_latents_below_threshold_are_exactly_zero():
    sae = make_sae("jumprelu", jumprelu_init_threshold=0.1, jumprelu_bandwidth=0.1, sparsity_coefficient=0.1)
    before = sae.threshold.detach().clone()
    train_steps(sae, torch.randn(5, 128, 16), steps=5, lr=1e-2)
    moved = (sae.threshold.detach() - before).abs()
    assert (moved > 1e-3).float().mean() > 0.5, "thresholds must move under Adam"

    x = torch.randn(64, 16)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    z = sae.encode(x)
    below = pre <= sae.threshold
    assert below.any() and (~below).any()
    assert (z[below] == 0).all()
    torch.testing.assert_close(z[~below], pre[~below])


def test_relu_l0_falls_as_the_sparsity_coefficient_rises():
    data = torch.randn(20, 256, 16)
    l0s = []
    for coefficient in (0.0, 0.3, 3.0):
        sae = make_sae("relu", sparsity_coefficient=coefficient)
        train_steps(sae, data, steps=40, lr=3e-3)
        with torch.no_grad():
            l0s.append(sae(data[0], return_loss=False).l0.item())
    assert l0s[0] > l0s[1] > l0s[2], l0s


def test_auxk_loss_appears_only_with_dead_latents_and_trains_them():
    sae = make_sae("topk")
    sae.train()
    x = torch.randn(32, 16)
    assert sae(x).auxiliary_loss is None
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:32] = True
    out = sae(x, dead_latents=dead)
    assert out.auxiliary_loss > 0
    out.auxiliary_loss.backward()
    # AuxK reaches only dead latents' encoder rows
    assert sae.W_enc.grad[32:].abs().sum() == 0
    assert sae.W_enc.grad[:32].abs().sum() > 0


# ---- gradients against finite differences ------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_match_finite_differences(architecture):
    sae = make_sae(architecture, d_in=6, num_latents=12, k=3 if "topk" in architecture else None)
    sae.double().train()
    torch.manual_seed(2)
    x = torch.randn(5, 6, dtype=torch.float64) * 2
    # JumpReLU's threshold gradient is a designed pseudo-gradient, not the true (zero) derivative: leave it out.
    names = [name for name, _ in sae.named_parameters() if name != "threshold"]
    fixed = {name: t for name, t in sae.named_parameters() if name == "threshold"}
    # The gated penalties stop gradients into the decoder on purpose (their paper, eq. 8), so check its MSE alone.
    part = "mse_loss" if architecture == "gated" else "loss"

    def loss(*params):
        return functional_call(sae, {**fixed, **dict(zip(names, params))}, (x,))[part]

    inputs = tuple(p.detach().clone().requires_grad_(True) for n, p in sae.named_parameters() if n in names)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)


def test_auxk_gradients_match_a_dense_reference():
    sae = make_sae("topk", d_in=6, num_latents=12, k=3).double().train()
    x = torch.randn(5, 6, dtype=torch.float64)
    dead = torch.arange(12) % 2 == 0
    sae(x, dead_latents=dead).auxiliary_loss.backward()
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach().clone().requires_grad_(True)
                                  for n in ("W_enc", "b_enc", "W_dec", "b_dec"))  # fmt: skip
    pre = (x - b_dec) @ W_enc.T + b_enc
    kept = torch.zeros_like(pre).scatter(-1, pre.topk(3).indices, 1.0)
    residual = (x - ((pre * kept).relu() @ W_dec + b_dec)).detach()
    aux_pre = pre.masked_fill(~dead, float("-inf"))
    aux = torch.zeros_like(pre).scatter(-1, aux_pre.topk(3).indices, 1.0)  # k_aux = min(d_in // 2, 6 dead) = 3
    aux_reconstruction = (pre * aux).relu() @ W_dec
    error = (aux_reconstruction - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
    (sae.config.auxk_coefficient * error * (x - x.mean(0)).pow(2).sum(-1).mean()).backward()
    for name, reference in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (W_enc, b_enc, W_dec, b_dec)):
        torch.testing.assert_close(getattr(sae, name).grad, reference.grad)


def test_sparse_kernels_match_the_dense_computation():
    sae = make_sae("topk", k=7)
    dense = make_sae("relu")  # same seed, so same initial weights up to the relu init scale
    with torch.no_grad():
        dense.W_dec.copy_(sae.W_dec)
        dense.W_enc.copy_(sae.W_enc)
    x = torch.randn(50, 16, requires_grad=True)  # an input gradient too, as attribution through an SAE needs
    x_dense = x.detach().clone().requires_grad_(True)
    out = sae(x, return_loss=True)
    out.mse_loss.backward()
    # Dense reference: topk mask applied to a dense encoder and decoder
    pre = (x_dense - dense.b_dec) @ dense.W_enc.T + dense.b_enc
    mask = torch.zeros_like(pre).scatter(-1, pre.topk(7).indices, 1.0)
    reconstruction = (pre * mask).relu() @ dense.W_dec + dense.b_dec
    (reconstruction - x_dense).pow(2).sum(-1).mean().backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(dense, name).grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_dense.grad, rtol=1e-4, atol=1e-5)


# ---- sparse training steps against the dense computation of each paper's loss ----------------------------------


def calibrate_density_(sae: SaeModel, x: torch.Tensor, density: float) -> None:
    """Shift the encoder bias (JumpReLU: the thresholds) so that about `density` of the entries of x are active."""
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        cut = pre.flatten().quantile(1 - density)
        if sae.config.architecture == "jumprelu":
            sae.threshold.copy_(cut + 0.3 * torch.randn_like(sae.threshold).abs())
        else:
            sae.b_enc.sub_(cut)


def dense_reference(sae: SaeModel, x: torch.Tensor, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each architecture's loss terms written densely over (N, num_latents), from the papers' formulas."""
    cfg, arch = sae.config, sae.config.architecture
    pre = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    norms, c = p["W_dec"].norm(dim=-1), cfg.sparsity_coefficient
    terms = {}
    if arch == "relu":
        z = pre.relu()
        terms["sparsity_loss"] = c * (z * norms).sum(-1).mean()
    elif arch == "jumprelu":
        z = pre * (pre > p["threshold"])
        terms["sparsity_loss"] = c * (pre > p["threshold"]).sum(-1).double().mean()  # no gradient but θ's
    elif arch == "gated":
        gate = pre.relu()
        magnitude = (x - p["b_dec"]) @ (p["W_enc"] * p["r_mag"].exp()[:, None]).T + p["b_mag"]
        z = (pre > 0) * magnitude.relu()
        terms["sparsity_loss"] = c * (gate * norms.detach()).sum(-1).mean()
        via_gate = gate @ p["W_dec"].detach() + p["b_dec"].detach()
        terms["auxiliary_loss"] = (via_gate - x).pow(2).sum(-1).mean()
    else:  # matryoshka_batchtopk: BatchTopK, and every nested prefix reconstructs x
        kept = torch.zeros(pre.numel(), dtype=pre.dtype).scatter(0, pre.flatten().topk(cfg.k * len(x)).indices, 1.0)
        z = (pre * kept.reshape(pre.shape)).relu()
        ends = torch.tensor(cfg.matryoshka_group_sizes).cumsum(0).tolist()
        terms["prefix_loss"] = sum(
            (z[:, :end] @ p["W_dec"][:end] + p["b_dec"] - x).pow(2).sum(-1).mean() for end in ends[:-1]
        )
    z.retain_grad()
    terms["mse_loss"] = (z @ p["W_dec"] + p["b_dec"] - x).pow(2).sum(-1).mean()
    return {**terms, "z": z, "pre": pre}


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "gated", "matryoshka_batchtopk"])
def test_sparse_step_gradients_equal_the_dense_reference(architecture):
    k = {"k": 3} if architecture == "matryoshka_batchtopk" else {}
    sae = make_sae(architecture, d_in=12, num_latents=40, **k, jumprelu_bandwidth=0.5, sparsity_coefficient=0.3)
    sae.double().train()
    x = torch.randn(30, 12, dtype=torch.float64) * 2
    with torch.no_grad():
        for name in ("r_mag", "b_mag", "b_dec"):
            if hasattr(sae, name):
                getattr(sae, name).copy_(torch.randn_like(getattr(sae, name)) * 0.3)
    calibrate_density_(sae, x, 0.15)
    out = sae(x)
    out.loss.backward()

    p = {n: t.detach().clone().requires_grad_(True) for n, t in sae.named_parameters()}
    ref = dense_reference(sae, x, p)
    terms = [n for n in ("mse_loss", "sparsity_loss", "auxiliary_loss", "prefix_loss") if n in ref]
    for name in terms:
        torch.testing.assert_close(getattr(out, name), ref[name], msg=name)
    assert all(getattr(out, n) is None for n in ("sparsity_loss", "auxiliary_loss", "prefix_loss") if n not in ref)
    torch.testing.assert_close(out.latents, ref["z"].detach())
    assert 0.05 < (out.latents != 0).double().mean() < 0.3  # the step ran on a sparse code
    sum(ref[n] for n in terms).backward()
    for name, param in sae.named_parameters():
        if name == "threshold":  # the pseudo-gradients, summed over the entries in the kernel's support
            eps, theta, pre = sae.config.jumprelu_bandwidth, p["threshold"].detach(), ref["pre"].detach()
            kernel = (((pre - theta) / eps).abs() < 0.5).double()
            from_mse = (-(theta / eps) * kernel * ref["z"].grad).sum(0)
            from_l0 = sae.config.sparsity_coefficient * (-(1 / eps) * kernel).sum(0) / len(x)
            assert kernel.sum() > 10  # entries on both sides of the thresholds are inside the kernel
            torch.testing.assert_close(param.grad, from_mse + from_l0)
        else:
            torch.testing.assert_close(param.grad, p[name].grad, msg=name)


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "gated", "topk", "matryoshka_batchtopk"])
def test_a_training_step_keeps_nothing_of_the_dense_latent_shape_for_backward(architecture):
    sae = make_sae(architecture, d_in=16, num_latents=256).train()
    x = torch.randn(512, 16)
    calibrate_density_(sae, x, 0.03) if not ARCHITECTURES[architecture].uses_k else None
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t, lambda t: t):
        out = sae(x, return_latents=False)
    out.loss.backward()
    assert shapes and out.l0 < 16
    assert max(math.prod(shape) for shape in shapes) < 512 * 256 / 8, shapes  # (N, num_latents) / 8


def test_matryoshka_trains_its_first_group_to_reconstruct_alone():
    """The point of the nested loss (Bussmann et al. 2025): the first group of latents alone reconstructs much
    better than the same latents of a BatchTopK SAE trained on the same data, at a similar full reconstruction."""
    torch.manual_seed(3)
    data = torch.randn(60, 256, 16) * torch.linspace(0.3, 3.0, 16)
    x, fvu = data[0], lambda estimate: ((estimate - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    first, full = {}, {}
    for architecture in ("matryoshka_batchtopk", "batchtopk"):
        sae = make_sae(architecture, k=4)  # Matryoshka groups [16, 48]
        train_steps(sae, data, steps=150, lr=3e-3)
        with torch.no_grad():
            out = sae(x)
            first[architecture] = fvu(out.latents[:, :16] @ sae.W_dec[:16] + sae.b_dec)
            full[architecture] = fvu(out.reconstruction)
    assert first["matryoshka_batchtopk"] < 0.75 * first["batchtopk"], first
    assert full["matryoshka_batchtopk"] < 1.1 * full["batchtopk"], full


# ---- save / load -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_and_load_round_trip_bit_identically(tmp_path, architecture, dtype):
    sae = make_sae(architecture, hookpoint="model.layers.1").to(dtype)
    with torch.no_grad():  # make every tensor non-trivial, buffers included
        for tensor in sae.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))
    sae.save_pretrained(tmp_path / "model.layers.1")
    assert (tmp_path / "model.layers.1" / "model.safetensors").exists()
    for loaded in (
        AutoModel.from_pretrained(tmp_path, subfolder="model.layers.1", dtype=dtype),
        SaeModel.from_pretrained(tmp_path / "model.layers.1", dtype=dtype),
    ):
        assert type(loaded) is SaeModel
        assert loaded.config.hookpoint == "model.layers.1"
        assert loaded.state_dict().keys() == sae.state_dict().keys()
        for name, tensor in sae.state_dict().items():
            assert loaded.state_dict()[name].dtype == dtype
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_weights_with_wrong_shapes_name_the_tensor_and_both_shapes(tmp_path):
    make_sae("topk").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["W_dec"] = torch.zeros(32, 16)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"`W_dec` .* has shape \(32, 16\) .* expects \(64, 16\)"):
        AutoModel.from_pretrained(tmp_path)


def test_missing_weight_is_an_error(tmp_path):
    make_sae("jumprelu").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["threshold"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"model.safetensors lacks \['threshold'\], which a 'jumprelu' SAE needs"):
        SaeModel.from_pretrained(tmp_path)


def test_unknown_weight_and_config_key_from_a_newer_version_warn_instead_of_crashing(tmp_path, caplog):
    sae = make_sae("topk")
    sae.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["W_future"] = torch.zeros(16, 16)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["future_option"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        loaded = AutoModel.from_pretrained(tmp_path)
    assert "Ignoring weights ['W_future']" in caplog.text
    assert "unknown keys ['future_option']" in caplog.text
    assert torch.equal(loaded.W_dec, sae.W_dec)


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects activations of shape \(\.\.\., d_in=16\); got shape \(2, 12\)"):
        make_sae("topk")(torch.randn(2, 12))


# ---- training helpers and dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_folding_an_activation_scale_makes_the_sae_take_raw_activations(architecture):
    sae = make_sae(architecture)
    x = torch.randn(32, 16) * 40
    scale = 0.05
    expected = sae(x * scale).reconstruction / scale
    sae.fold_activation_scale_(scale)
    torch.testing.assert_close(sae(x).reconstruction, expected, rtol=1e-4, atol=1e-3)


def test_decoder_normalisation_and_parallel_gradient_removal():
    sae = make_sae("topk")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) + 0.5)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    sae.train()
    sae(torch.randn(32, 16)).loss.backward()
    sae.remove_gradient_parallel_to_decoder_()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bfloat16_forward_and_backward(architecture):
    sae = make_sae(architecture).to(torch.bfloat16).train()
    x = torch.randn(64, 16, dtype=torch.bfloat16)
    out = sae(x, dead_latents=torch.ones(64, dtype=torch.bool))
    assert out.reconstruction.dtype == torch.bfloat16
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in sae.parameters())
    reference = make_sae(architecture).train()
    expected = reference(x.float(), dead_latents=torch.ones(64, dtype=torch.bool)).reconstruction
    # Where latents tie in bf16 for the last place that fp32 tells apart, another latent may be kept: a few tokens.
    close = (out.reconstruction.float() - expected).abs() <= 0.05 + 0.05 * expected.abs()
    assert close.all(-1).float().mean() >= 0.9, close.all(-1).float().mean()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_cuda_matches_cpu(architecture):
    sae = make_sae(architecture).train()
    x = torch.randn(128, 16)
    cpu = sae(x, dead_latents=torch.ones(64, dtype=torch.bool))
    gpu = sae.cuda()(x.cuda(), dead_latents=torch.ones(64, dtype=torch.bool, device="cuda"))
    torch.testing.assert_close(gpu.reconstruction.cpu(), cpu.reconstruction, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.loss.cpu(), cpu.loss, rtol=1e-4, atol=1e-4)


# ---- a folder of several SAEs ---------------------------------------------------------------------------------


def several_saes_with_features(root):
    from hf_sae.hub import save_saes

    features = root.parent / "made-features"
    features.mkdir()
    (features / "metadata.json").write_text('{"num_tokens": 1000}')
    (features / "labels.json").write_text('{"3": "bridges"}')
    saes = {f"model.layers.{i}": make_sae("topk") for i in (1, 2)}
    save_saes(saes, root, features={"model.layers.2": features})
    return saes


def test_one_sae_of_several_finds_its_own_features_in_its_subfolder(tmp_path):
    several_saes_with_features(tmp_path / "saes")
    assert not (tmp_path / "saes" / "features").exists()  # only the hookpoint's folder has them
    sae = SaeModel.from_pretrained(tmp_path / "saes", subfolder="model.layers.2")
    assert sae.features.path == tmp_path / "saes" / "model.layers.2" / "features"
    assert sae.features.labels == {3: "bridges"} and sae.features.metadata == {"num_tokens": 1000}


def test_automodel_on_a_folder_of_several_saes_names_them_and_subfolder(tmp_path):
    from hf_sae import ArgumentError

    several_saes_with_features(tmp_path / "saes")
    for load in (AutoModel.from_pretrained, SaeModel.from_pretrained):
        with pytest.raises(ArgumentError) as info:
            load(tmp_path / "saes")
        assert (
            f"No config.json in {tmp_path / 'saes'}: it holds several SAEs, one per folder: model.layers.1, "
            "model.layers.2. Name the one with `subfolder=`" in str(info.value)
        )
        assert "`AutoModel.from_pretrained(..., subfolder='model.layers.1')`" in str(info.value)
    assert torch.equal(AutoModel.from_pretrained(tmp_path / "saes", subfolder="model.layers.1").W_dec,
                       SaeModel.from_pretrained(tmp_path / "saes" / "model.layers.1").W_dec)  # fmt: skip
