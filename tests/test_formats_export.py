"""Exports as the field expects them: unit-norm decoder rows (`fold_decoder_norm_`), and the SAELens export as
SAELens' own loader and Hugging Face wrapper took it (tests/fixtures/saelens_export/, written by
tests/fixtures/make_saelens_export_fixtures.py)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_sae import ArgumentError, SaeConfig, SaeConfigError, SaeModel
from hf_sae.architectures import ARCHITECTURES, UNIFORM_NORM_RTOL, fold_decoder_norm_
from hf_sae.arguments import ConvertArguments
from hf_sae.convert import export_sae
from hf_sae.hookpoints import INPUT_SUFFIX

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


# ---- SAELens' own loader and Hugging Face wrapper on the exports (tests/fixtures/saelens_export/make.py) ----------

EXPORTS = Path(__file__).parent / "fixtures" / "saelens_export"
SMOLLM2_D, SMOLLM2 = 576, "HuggingFaceTB/SmolLM2-135M-Instruct"
# name -> (architecture, transcoder, skip connection)
EXPORTED = {
    "standard": ("relu", False, False),
    "topk": ("topk", False, False),
    "batchtopk": ("batchtopk", False, False),
    "matryoshka_batchtopk": ("matryoshka_batchtopk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
    "batchtopk_transcoder": ("batchtopk", True, False),
}


def exported_sae(name: str) -> SaeModel:
    """A seeded SAE on SmolLM2-135M's layer 3 (a transcoder: its MLP), 64 latents, every tensor random."""
    architecture, transcoder, skip = EXPORTED[name]
    fields = {"k": 8} if ARCHITECTURES[architecture].uses_k else {}
    if architecture == "matryoshka_batchtopk":
        fields["matryoshka_group_sizes"] = [16, 48]
    if transcoder:
        fields |= {"hookpoint": f"model.layers.3.mlp{INPUT_SUFFIX}", "output_hookpoint": "model.layers.3.mlp",
                   "skip_connection": skip, "apply_b_dec_to_input": False}  # fmt: skip
    else:
        fields["hookpoint"] = "model.layers.3"
    config = SaeConfig(d_in=SMOLLM2_D, num_latents=64, architecture=architecture, base_model_name_or_path=SMOLLM2,
                       **fields)  # fmt: skip
    sae = SaeModel(config).eval()
    generator = torch.Generator().manual_seed(list(EXPORTED).index(name))
    with torch.no_grad():
        for tensor_name, tensor in [*sae.named_parameters(), *sae.named_buffers()]:
            noise = torch.randn(tensor.shape, generator=generator)
            scale = 1 / SMOLLM2_D**0.5 if tensor.ndim == 2 else 0.1
            tensor.copy_(noise.abs() * 0.5 if tensor_name == "threshold" else noise * scale)
    return sae


# Exported a second time with rows of norms 0.5 to 7 folded to unit norm, for SAELens' own `fold_W_dec_norm` to match
FOLDED = ("standard", "jumprelu", "gated", "transcoder", "jumprelu_skip_transcoder")


def export_all(folder: str) -> None:
    for name in EXPORTED:
        export_sae(exported_sae(name), Path(folder) / name, "saelens")
    for name in FOLDED:
        sae = exported_sae(name)
        with torch.no_grad():
            sae.W_dec.mul_(torch.linspace(0.5, 7.0, sae.config.num_latents)[:, None])
        export_sae(sae, Path(folder) / f"{name}.unfolded", "saelens")
        export_sae(sae, Path(folder) / f"{name}.folded", "saelens", unit_norm_decoder=True)


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


def test_the_saelens_run_covered_every_export():
    outcome = json.loads((EXPORTS / "outcome.json").read_text())
    assert outcome["sae_lens"] == "6.54.12" and outcome["refused"] == {}
    assert sorted(outcome["runs"]) == sorted(EXPORTED)
    for run in outcome["runs"].values():  # the wrapper's store began every context with BOS and left it out
        assert run["prepend_bos"] is True and run["bos_in_tokens"] is True
        assert run["activations_per_context"] == run["context_size"] - 1
        assert run["metrics"]["sparsity"]["l0"] > 0 and math.isfinite(
            run["metrics"]["model_performance_preservation"]["ce_loss_with_sae"]
        )


@pytest.mark.parametrize("name", list(EXPORTED))
def test_the_export_is_what_saelens_ran_and_computes_what_saelens_computed(name, tmp_path):
    """The export today writes the config SAELens' loader, store and evaluation took, and hf_sae computes from it
    what SAELens computed on the activations its Hugging Face wrapper harvested from SmolLM2."""
    run = json.loads((EXPORTS / "outcome.json").read_text())["runs"][name]
    folder = export_sae(exported_sae(name), tmp_path / name, "saelens")
    written = json.loads((folder / "cfg.json").read_text())
    for cfg in (written, run["cfg"]):
        cfg["metadata"].pop("hf_sae_version")
    assert written == run["cfg"]
    recorded = load_file(EXPORTS / f"{name}.safetensors")
    back = SaeModel.from_pretrained(folder).eval()
    assert back.config.hookpoint == exported_sae(name).config.hookpoint  # hf_sae's own name, not SAELens' module
    with torch.no_grad():
        latents = back.encode(recorded["x"])
        assert int((latents != 0).sum()) > 0
        assert torch.allclose(latents, recorded["latents"], rtol=1e-4, atol=1e-4)
        assert torch.allclose(back.decode(latents), recorded["reconstruction"], rtol=1e-4, atol=1e-4)


def test_the_fold_is_saelens_fold_w_dec_norm_to_the_bit():
    """SAELens' `load_from_disk(fold_W_dec_norm=True)` on the unfolded export gave the very tensors of hf_sae's
    `--unit_norm_decoder` export (largest difference relative to the tensor's largest value, per tensor)."""
    folds = json.loads((EXPORTS / "outcome.json").read_text())["fold_W_dec_norm"]
    assert sorted(folds) == sorted(FOLDED)
    for differences in folds.values():
        assert {"W_enc", "W_dec"} <= set(differences) and max(differences.values()) == 0.0


def test_a_hookpoint_no_module_outputs_is_refused_for_saelens(tmp_path):
    sae = SaeModel(SaeConfig(d_in=8, num_latents=16, architecture="relu", hookpoint="model.layers.0.input"))
    with pytest.raises(SaeConfigError, match=r"no module's output is 'model.layers.0.input'.*--to hf_sae"):
        export_sae(sae, tmp_path / "out", "saelens")
    assert not (tmp_path / "out").exists()


def test_a_topk_transcoder_is_refused_for_saelens_naming_the_formats_that_hold_it(tmp_path):
    topk = SaeModel(SaeConfig(d_in=8, num_latents=16, k=2, hookpoint="model.layers.1.mlp.input",
                              output_hookpoint="model.layers.1.mlp", apply_b_dec_to_input=False))  # fmt: skip
    refusal = (
        r"this transcoder is 'topk'\. hf_sae's own format holds it .*sparsify's.*circuit-tracer's cannot express TopK"
    )
    with pytest.raises(SaeConfigError, match=refusal):
        export_sae(topk, tmp_path / "out", "saelens")
    assert not (tmp_path / "out").exists()


def test_hf_sae_convert_unit_norm_decoder_writes_unit_norm_rows(tmp_path):
    from hf_sae import SaeConfig, SaeModel, fold_decoder_norm_
    from hf_sae.cli import main

    sae = SaeModel(SaeConfig(d_in=8, num_latents=16, architecture="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, 16)[:, None])
    sae.save_pretrained(tmp_path / "sae")
    assert not torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(16))  # the rows were not unit norm
    assert main(["convert", str(tmp_path / "sae"), str(tmp_path / "out"), "--unit_norm_decoder", "true"]) == 0
    folded = SaeModel.from_pretrained(tmp_path / "out")
    assert torch.allclose(folded.W_dec.norm(dim=-1), torch.ones(16), atol=1e-6)
    expected = SaeModel.from_pretrained(tmp_path / "sae")
    fold_decoder_norm_(expected)
    assert torch.equal(folded.W_enc, expected.W_enc) and torch.equal(folded.W_dec, expected.W_dec)
