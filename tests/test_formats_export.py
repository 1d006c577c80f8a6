"""Exports as the field expects them: unit-norm decoder rows (`fold_decoder_norm_`), and the SAELens export as
SAELens' own loader and Hugging Face wrapper took it (tests/fixtures/saelens_export/, written by
tests/fixtures/make_saelens_export_fixtures.py)."""

import pytest
import torch
from safetensors.torch import load_file

from hf_sae import ArgumentError, SaeConfig, SaeConfigError, SaeModel
from hf_sae.architectures import ARCHITECTURES, UNIFORM_NORM_RTOL, fold_decoder_norm_
from hf_sae.arguments import ConvertArguments
from hf_sae.convert import export_sae

D_IN, D_OUT, LATENTS, K = 16, 12, 64, 4


def random_sae(architecture: str, transcoder: bool = False, seed: int = 0) -> SaeModel:
    """Every tensor random, decoder rows of norms 0.2 to 8 (the k family: one shared norm 7.13, as a unit-norm decoder
    with a folded activation scale has), thresholds positive."""
    fields = {"k": K} if ARCHITECTURES[architecture].uses_k else {}
    if architecture == "matryoshka_batchtopk":
        fields["matryoshka_group_sizes"] = [16, LATENTS - 16]
    if transcoder:
        fields |= {"d_out": D_OUT, "hookpoint": "model.layers.1.mlp.input", "output_hookpoint": "model.layers.1.mlp",
                   "skip_connection": True, "apply_b_dec_to_input": False}  # fmt: skip
    sae = SaeModel(SaeConfig(d_in=D_IN, num_latents=LATENTS, architecture=architecture, **fields)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*sae.named_parameters(), *sae.named_buffers()]:
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(noise.abs() * 0.2 if name == "threshold" else noise * 0.3)
        unit_rows = torch.nn.functional.normalize(sae.W_dec, dim=-1)
        if ARCHITECTURES[architecture].uses_k:
            sae.W_dec.copy_(unit_rows * 7.13)
        else:
            sae.W_dec.copy_(unit_rows * torch.linspace(0.2, 8.0, LATENTS)[:, None])
    return sae


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(64, D_IN, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("transcoder", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_folding_decoder_norms_keeps_every_reconstruction(architecture, transcoder):
    sae, x = random_sae(architecture, transcoder), inputs()
    norms_before = sae.W_dec.detach().norm(dim=-1)
    assert (norms_before - 1).abs().max() > 6  # the rows really were not unit-norm
    with torch.no_grad():
        before = sae(x)
        assert int((before.latents != 0).sum()) > 0 and (before.latents == 0).any()  # some latents on, some off
        norms = fold_decoder_norm_(sae)
        after = sae(x)
    assert torch.allclose(norms, norms_before)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(LATENTS), atol=1e-6)
    scale = before.reconstruction.abs().max()
    assert torch.allclose(after.reconstruction, before.reconstruction, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(after.latents != 0, before.latents != 0)
    assert torch.allclose(after.latents, before.latents * norms, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("architecture", [name for name, arch in ARCHITECTURES.items() if arch.uses_k])
def test_the_k_family_with_unequal_norms_is_refused_untouched(architecture):
    sae = random_sae(architecture)
    with torch.no_grad():
        sae.W_dec[3] *= 1 + 10 * UNIFORM_NORM_RTOL
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    with pytest.raises(SaeConfigError, match=rf"{architecture} SAE's decoder rows have norms from 7\.13 to 7\.137.*"
                                             rf"change which latents {architecture} keeps"):  # fmt: skip
        fold_decoder_norm_(sae)
    assert all(torch.equal(state[k], v) for k, v in sae.state_dict().items())


def test_an_unset_batchtopk_threshold_stays_unset_and_zero_rows_stay_zero():
    sae = random_sae("batchtopk")
    with torch.no_grad():
        sae.threshold.fill_(-1.0)
        sae.W_dec[5] = 0
    fold_decoder_norm_(sae)
    assert float(sae.threshold) == -1.0 and not sae.W_dec[5].any()
    assert torch.allclose(sae.W_enc[5], random_sae("batchtopk").W_enc[5] * 7.13)  # the common scale


def test_export_with_unit_norm_decoder_writes_a_folded_copy(tmp_path):
    sae, x = random_sae("jumprelu"), inputs()
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    out = export_sae(sae, tmp_path / "out", "hf_sae", unit_norm_decoder=True)
    assert all(torch.equal(state[k], v) for k, v in sae.state_dict().items())  # the caller's SAE is untouched
    back = SaeModel.from_pretrained(out).eval()
    assert torch.allclose(back.W_dec.norm(dim=-1), torch.ones(LATENTS), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(back(x).reconstruction, sae(x).reconstruction, rtol=1e-5, atol=1e-5)
    lens = export_sae(sae, tmp_path / "lens", "saelens", unit_norm_decoder=True)
    weights = load_file(lens / "sae_weights.safetensors")
    assert torch.allclose(weights["W_dec"].norm(dim=-1), torch.ones(LATENTS), atol=1e-6)


def test_convert_arguments_take_unit_norm_decoder_and_refuse_it_for_circuit_tracer(tmp_path):
    args = ConvertArguments(src=str(tmp_path), dst=str(tmp_path / "o"), to="saelens", unit_norm_decoder=True)
    assert args.unit_norm_decoder is True
    with pytest.raises(ArgumentError, match=r"--unit_norm_decoder rescales one SAE at a time"):
        ConvertArguments(src=str(tmp_path), dst=str(tmp_path / "o"), to="circuit_tracer", unit_norm_decoder=True)


def test_unit_norm_decoder_is_refused_for_feature_metadata(tmp_path):
    with pytest.raises(ArgumentError, match=r"`unit_norm_decoder` rescales the latents"):
        export_sae(random_sae("relu"), tmp_path / "np", "neuronpedia", unit_norm_decoder=True)
    assert not (tmp_path / "np").exists()
