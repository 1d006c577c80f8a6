"""Other formats in and out, against files the real packages wrote (tests/fixtures/make_format_fixtures.py:
sae-lens 6.54.12, eai-sparsify 1.3.3, dictionary-learning 0.1.0; Gemma Scope and Llama Scope in their published
layouts)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import HubServer, point_client_at
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

from hf_sae import (
    ArgumentError,
    HookpointError,
    HubError,
    SaeConfig,
    SaeConfigError,
    SaeHooks,
    SaeModel,
    SaeNotFoundError,
    WeightsError,
    load_saes,
)
from hf_sae.arguments import ConvertArguments
from hf_sae.cli import main
from hf_sae.convert import detect_format, export_sae, releases
from hf_sae.formats import match_release
from hf_sae.formats import names as N
from hf_sae.runners import run_convert

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
DICTIONARY_CLASSES = ["AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
                      "JumpReluAutoEncoder", "GatedAutoEncoder"]  # fmt: skip
# fixture -> (folder, format, hf_sae architecture, hookpoint, base model)
CASES = {
    "saelens_standard": ("saelens_standard", "saelens", "relu", "transformer.h.3.input", "gpt2"),
    "saelens_topk": ("saelens_topk", "saelens", "topk", "transformer.h.2", "gpt2"),
    "saelens_jumprelu": (
        "saelens_jumprelu",
        "saelens",
        "jumprelu",
        "model.layers.4.post_feedforward_layernorm",
        "google/gemma-2-2b",
    ),  # fmt: skip
    "saelens_gated": ("saelens_gated", "saelens", "gated", "transformer.h.1.attn", "gpt2"),
    "saelens_batchtopk": ("saelens_batchtopk", "saelens", "batchtopk", "transformer.h.5", "gpt2"),
    "saelens_topk_checkpoint": ("saelens_topk_checkpoint", "saelens", "topk", "transformer.h.6", "gpt2"),
    "saelens_legacy": ("saelens_legacy", "saelens", "relu", "transformer.h.8.input", "gpt2"),
    "sparsify_layers_3": ("sparsify_run/layers.3", "sparsify", "topk", "gpt_neox.layers.3", "EleutherAI/pythia-70m"),
    "gemma_scope": ("gemma_scope/layer_3/width_256/average_l0_40", "gemma_scope", "jumprelu", "model.layers.3", None),
    "llama_scope": (
        "llama_scope/Llama3_1-8B-Base-L3R-8x",
        "llama_scope",
        "jumprelu",
        "model.layers.3",
        "meta-llama/Llama-3.1-8B",
    ),  # fmt: skip
    **{
        f"dictionary_learning_{name}": (
            f"dictionary_learning_run/trainer_{i}",
            "dictionary_learning",
            {
                "AutoEncoder": "relu",
                "AutoEncoderNew": "relu",
                "AutoEncoderTopK": "topk",
                "MatryoshkaBatchTopKSAE": "matryoshka_batchtopk",
                "JumpReluAutoEncoder": "jumprelu",
                "GatedAutoEncoder": "gated",
            }.get(name, "batchtopk"),
            "gpt_neox.layers.3",
            "EleutherAI/pythia-70m",
        )
        for i, name in enumerate(DICTIONARY_CLASSES)
    },  # fmt: skip
}
# transcoder fixture -> (folder, format, architecture, hookpoint, output hookpoint, d_out, skip, base model)
TRANSCODERS = {
    "saelens_transcoder": ("saelens_transcoder", "saelens", "relu", "transformer.h.2.mlp.input", "transformer.h.2.mlp",
                           64, False, "gpt2"),
    "saelens_skip_transcoder": ("saelens_skip_transcoder", "saelens", "relu", "transformer.h.3.mlp.input",
                                "transformer.h.3.mlp", 48, True, "gpt2"),
    "saelens_jumprelu_transcoder": ("saelens_jumprelu_transcoder", "saelens", "jumprelu", "model.layers.4.mlp.input",
                                    "model.layers.4.post_feedforward_layernorm", 64, False, "google/gemma-2-2b"),
    "saelens_jumprelu_skip_transcoder": ("saelens_jumprelu_skip_transcoder", "saelens", "jumprelu",
                                         "model.layers.5.mlp.input", "model.layers.5.post_feedforward_layernorm", 64,
                                         True, "google/gemma-2-2b"),
    "sparsify_layers_3_mlp": ("sparsify_run/layers.3.mlp", "sparsify", "topk", "gpt_neox.layers.3.mlp.input",
                              "gpt_neox.layers.3.mlp", 64, False, "EleutherAI/pythia-70m"),
    "sparsify_layers_2_mlp": ("sparsify_transcoder_run/layers.2.mlp", "sparsify", "topk",
                              "gpt_neox.layers.2.mlp.input", "gpt_neox.layers.2.mlp", 64, True,
                              "EleutherAI/pythia-70m"),
}  # fmt: skip
ALICE = "hf_alice_write"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).abs().max() / expected.abs().max())


def expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "expected" / f"{name}.safetensors")


def assert_matches(sae: SaeModel, name: str) -> None:
    e = expected(name)
    with torch.no_grad():
        out = sae(e["x"])
    assert (e["latents"] != 0).sum() > 0
    assert relative_error(out.latents, e["latents"]) < 1e-5
    assert relative_error(out.reconstruction, e["reconstruction"]) < 1e-5


# ---- loading, against each package's own forward --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_each_format_loads_as_its_package_computes(name):
    folder, fmt, architecture, hookpoint, base_model = CASES[name]
    assert detect_format(FIXTURES / folder) == fmt
    sae = SaeModel.from_pretrained(FIXTURES / folder)  # no format named
    assert (sae.config.architecture, sae.config.hookpoint) == (architecture, hookpoint)
    assert sae.config.base_model_name_or_path == base_model
    assert_matches(sae, name)


def test_another_format_takes_the_loading_arguments_as_hf_sae_s_own_does():
    folder = FIXTURES / CASES["saelens_topk"][0]
    for load in (SaeModel.from_pretrained, AutoModel.from_pretrained):
        sae, info = load(folder, dtype="bfloat16", device_map="cpu", output_loading_info=True)
        assert sae.W_enc.dtype == torch.bfloat16 and sae.device.type == "cpu" and not sae.training
        assert info["missing_keys"] == [] and info["mismatched_keys"] == []
    (sae,) = load_saes(folder, dtype="torch.float16").values()
    assert sae.W_enc.dtype == torch.float16
    with pytest.raises(ArgumentError, match=r"`dtype` must be a floating torch dtype or its name .*got 'int8'"):
        SaeModel.from_pretrained(folder, dtype="int8")


@pytest.mark.parametrize("name", list(CASES))
def test_automodel_opens_each_format_as_sae_model_does(name):
    folder = FIXTURES / CASES[name][0]
    assert not (folder / "config.json").exists() or "model_type" not in (folder / "config.json").read_text()
    sae = AutoModel.from_pretrained(folder, dtype=torch.float64)
    assert type(sae) is SaeModel and sae.W_enc.dtype == torch.float64
    reference = SaeModel.from_pretrained(folder)
    assert sae.config.to_dict() == reference.config.to_dict()
    state = reference.state_dict()
    assert all(torch.equal(t, state[key].double()) for key, t in sae.state_dict().items())


def test_automodel_keeps_transformers_errors_for_what_is_no_sae(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text('{"learning_rate": 0.001}')  # no model_type, no SAE files
    with pytest.raises(ValueError, match="Unrecognized model"):
        AutoModel.from_pretrained(tmp_path / "notes")
    with pytest.raises(OSError, match="not-here"):
        AutoModel.from_pretrained(tmp_path / "not-here")
    with pytest.raises(ValueError, match="Unrecognized model"):  # the other Auto classes are untouched
        AutoModelForCausalLM.from_pretrained(FIXTURES / CASES["saelens_topk"][0])


@pytest.mark.parametrize("name", list(TRANSCODERS))
def test_each_transcoder_format_loads_as_its_package_computes(name):
    folder, fmt, architecture, hookpoint, output_hookpoint, d_out, skip, base_model = TRANSCODERS[name]
    assert detect_format(FIXTURES / folder) == fmt
    sae = SaeModel.from_pretrained(FIXTURES / folder)
    cfg = sae.config
    assert (cfg.architecture, cfg.hookpoint, cfg.output_hookpoint) == (architecture, hookpoint, output_hookpoint)
    assert (cfg.d_in, cfg.d_out, cfg.skip_connection, cfg.apply_b_dec_to_input) == (64, d_out, skip, False)
    assert cfg.base_model_name_or_path == base_model
    assert_matches(sae, name)  # the package's forward: the prediction, its skip term included
    if skip:  # the skip term is there and matters: without it the prediction is off
        with torch.no_grad():
            x = expected(name)["x"]
            assert relative_error(sae(x).reconstruction - sae.skip(x), expected(name)["reconstruction"]) > 0.1


def test_a_sparsify_run_with_an_sae_and_a_transcoder_loads_both_by_their_input_hookpoints():
    saes = load_saes(FIXTURES / "sparsify_run")
    assert sorted(saes) == ["gpt_neox.layers.3", "gpt_neox.layers.3.mlp.input"]
    assert saes["gpt_neox.layers.3.mlp.input"].config.output_hookpoint == "gpt_neox.layers.3.mlp"
    assert_matches(saes["gpt_neox.layers.3.mlp.input"], "sparsify_layers_3_mlp")


def test_a_loaded_transcoder_round_trips_through_hf_sae_format(tmp_path):
    sae = SaeModel.from_folder(FIXTURES / "saelens_jumprelu_skip_transcoder")
    sae.save_pretrained(tmp_path)
    loaded = SaeModel.from_pretrained(tmp_path)
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == {**sae.config.to_dict(), "_name_or_path": ""}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sae.state_dict().items())


def test_folded_scales_and_semantics():
    # SAELens' BatchTopK keeps k and one global threshold; JumpReLU does not subtract b_dec in Gemma Scope.
    batchtopk = SaeModel.from_folder(FIXTURES / "saelens_batchtopk")
    assert batchtopk.config.k == 16 and batchtopk.threshold.shape == ()
    assert not SaeModel.from_folder(FIXTURES / CASES["gemma_scope"][0]).config.apply_b_dec_to_input
    assert SaeModel.from_folder(
        FIXTURES / "sparsify_run/layers.3"
    ).config.apply_b_dec_to_input  # cfg.json does not say so
    # The checkpoint's activation scale (2.5) and decoder norms are folded: the SAE takes raw activations.
    checkpoint = SaeModel.from_folder(FIXTURES / "saelens_topk_checkpoint")
    raw = load_file(FIXTURES / "saelens_topk_checkpoint/sae_weights.safetensors")
    assert not torch.allclose(checkpoint.W_dec, raw["W_dec"])
    assert torch.allclose(checkpoint.W_dec.norm(dim=-1), torch.full((256,), 1 / 2.5))


def test_dictionary_learning_matryoshka_keeps_its_groups_and_exports_to_saelens(tmp_path):
    folder = FIXTURES / "dictionary_learning_run/trainer_4"
    sae = SaeModel.from_folder(folder)
    raw = torch.load(folder / "ae.pt", weights_only=True)
    assert sae.config.matryoshka_group_sizes == raw["group_sizes"].tolist() == [64, 192]
    assert sae.config.k == 16 and torch.equal(sae.threshold, raw["threshold"])
    out = export_sae(sae, tmp_path / "saelens", "saelens")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"  # inference is one threshold per latent, as SAELens saves its own
    details = cfg["metadata"]["training_architecture_details"]
    assert cfg["metadata"]["training_architecture"] == "matryoshka_batchtopk"
    assert details == {"k": 16, "matryoshka_widths": [64, 256]}
    back = SaeModel.from_folder(out)
    assert (back.config.architecture, back.config.matryoshka_group_sizes) == ("matryoshka_batchtopk", [64, 192])
    assert all(torch.equal(back.state_dict()[k], v) for k, v in sae.state_dict().items())
    assert_matches(back, "dictionary_learning_MatryoshkaBatchTopKSAE")


def test_gemma_scope_site_and_base_model_from_the_release_name():
    sae = SaeModel.from_folder(FIXTURES / CASES["gemma_scope"][0], hint="google/gemma-scope-9b-it-mlp")
    assert sae.config.hookpoint == "model.layers.3.post_feedforward_layernorm"
    assert sae.config.base_model_name_or_path == "google/gemma-2-9b-it"


def test_load_saes_picks_by_hookpoint_and_refuses_ambiguity():
    saes = load_saes(FIXTURES / "sparsify_run", hookpoints=["gpt_neox.layers.3"])
    assert list(saes) == ["gpt_neox.layers.3"]
    assert_matches(saes["gpt_neox.layers.3"], "sparsify_layers_3")
    with pytest.raises(ArgumentError, match=r"7 SAEs for 'gpt_neox.layers.3'.*subfolder='trainer_0'"):
        load_saes(FIXTURES / "dictionary_learning_run")
    with pytest.raises(HookpointError, match=r"no SAE for hookpoint\(s\) \['model.layers.9'\].*gpt_neox.layers.3"):
        load_saes(FIXTURES / "sparsify_run", hookpoints=["model.layers.9"])
    gated = SaeModel.from_pretrained(FIXTURES / "dictionary_learning_run", subfolder="trainer_6")
    assert_matches(gated, "dictionary_learning_GatedAutoEncoder")


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_unknown_folder_lists_the_formats_and_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(SaeNotFoundError, match=r"no SAE format.*saelens \(cfg.json \+ sae_weights.safetensors\).*"
                       r"gemma_scope \(params.npz\).*\['weights.bin'\]"):  # fmt: skip
        SaeModel.from_folder(tmp_path)


def copy(folder: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / folder, tmp_path / Path(folder).name))


def test_mis_shaped_and_missing_tensors_are_named(tmp_path):
    folder = copy("saelens_standard", tmp_path)
    weights = load_file(folder / "sae_weights.safetensors")
    save_file({**weights, "W_dec": weights["W_dec"].T.contiguous()}, folder / "sae_weights.safetensors")
    with pytest.raises(WeightsError, match=r"'W_dec'.*shape \(64, 256\).*says \(256, 64\)"):
        SaeModel.from_pretrained(folder)
    save_file({k: v for k, v in weights.items() if k != "b_enc"}, folder / "sae_weights.safetensors")
    with pytest.raises(WeightsError, match=r"lacks tensor 'b_enc' \(shape \(256,\)\)"):
        SaeModel.from_folder(folder)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("normalize_activations", "layer_norm", "normalize_activations='layer_norm'.*per-token layer norm"),
        ("normalize_activations", "expected_average_only_in", "neither folded in nor in activation_scaler.json"),
        ("architecture", "temporal", "architecture='temporal'"),
    ],
)
def test_what_cannot_be_represented_is_refused(tmp_path, field, value, message):
    folder = copy("saelens_standard", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(SaeConfigError, match=message):
        SaeModel.from_folder(folder)


def test_what_a_transcoder_cannot_be_is_refused(tmp_path):
    folder = copy("dictionary_learning_run/trainer_0", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "buffer": {**config["buffer"], "io": "in_and_out"}}))
    with pytest.raises(SaeConfigError, match=r"buffer.io='in_and_out'.*none reads one activation and predicts"):
        SaeModel.from_folder(folder)
    folder = copy("sparsify_transcoder_run/layers.2.mlp", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "transcode": False}))
    with pytest.raises(SaeConfigError, match=r"skip_connection=True.*applies to transcoders only"):
        SaeModel.from_folder(folder)
    folder = copy("saelens_transcoder", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["hook_name_out"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeConfigError, match=r"metadata.hook_name_out=None.*needs the activation it predicts"):
        SaeModel.from_folder(folder)


def test_a_llama_scope_transcoder_predicts_as_openmoss_computes(tmp_path):
    """Llama Scope's published layout with `hook_point_in` != `hook_point_out`; the expected numbers follow OpenMOSS'
    own loader at the release (lm_saes commit 1e71036): dataset-wise scales folded into the biases and decoder, the
    scalar threshold on the folded pre-activations."""
    d, n, norm_in, norm_out, threshold = 64, 256, 12.0, 3.0, 0.02
    generator = torch.Generator().manual_seed(0)
    shapes = {"encoder.weight": (n, d), "encoder.bias": (n,), "decoder.weight": (d, n), "decoder.bias": (d,)}
    weights = {name: torch.randn(shape, generator=generator) / 8 for name, shape in shapes.items()}
    folder = tmp_path / "Llama3_1-8B-Base-L3TC-8x"
    (folder / "checkpoints").mkdir(parents=True)
    save_file(weights, folder / "checkpoints" / "final.safetensors")
    hyper = {"d_model": d, "d_sae": n, "hook_point_in": "blocks.3.ln2.hook_normalized",
             "hook_point_out": "blocks.3.hook_mlp_out", "act_fn": "jumprelu", "jump_relu_threshold": threshold,
             "norm_activation": "dataset-wise",
             "dataset_average_activation_norm": {"in": norm_in, "out": norm_out}}  # fmt: skip
    (folder / "hyperparams.json").write_text(json.dumps(hyper))

    scale_in, scale_out = math.sqrt(d) / norm_in, math.sqrt(d) / norm_out
    x = torch.randn(32, d, generator=generator) * norm_in / math.sqrt(d)
    pre = x @ weights["encoder.weight"].T + weights["encoder.bias"] / scale_in
    latents = pre * (pre > threshold)
    prediction = latents @ (weights["decoder.weight"] * scale_in / scale_out).T + weights["decoder.bias"] / scale_out

    sae = SaeModel.from_pretrained(folder)
    assert (sae.config.hookpoint, sae.config.output_hookpoint) == ("model.layers.3.mlp.input", "model.layers.3.mlp")
    with torch.no_grad():
        out = sae(x)
    assert 0 < (latents != 0).float().mean() < 0.9
    assert torch.equal(out.latents != 0, latents != 0)
    torch.testing.assert_close(out.latents, latents * scale_in, rtol=1e-5, atol=1e-5)  # SAELens' latent scale
    torch.testing.assert_close(out.reconstruction, prediction, rtol=1e-5, atol=1e-5)


class _Trap:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/hf_sae_unpickle_ran"),))


def test_a_pickle_with_code_is_refused_unrun(tmp_path):
    folder = copy("dictionary_learning_run/trainer_0", tmp_path)
    trap = Path("/tmp/hf_sae_unpickle_ran")
    trap.unlink(missing_ok=True)
    torch.save({**torch.load(folder / "ae.pt", weights_only=True), "extra": _Trap()}, folder / "ae.pt")
    with pytest.raises(WeightsError, match=r"not a plain state dict.*weights_only=True"):
        SaeModel.from_folder(folder)
    assert not trap.exists()


# ---- names ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "model", "path"),
    [
        ("blocks.7.hook_resid_post", "meta-llama/Llama-3.1-8B", "model.layers.7"),
        ("blocks.7.hook_resid_pre", "Qwen/Qwen2.5-0.5B", "model.layers.7.input"),
        ("blocks.7.hook_mlp_out", "mistralai/Mistral-7B-v0.1", "model.layers.7.mlp"),
        ("blocks.7.hook_attn_out", "meta-llama/Llama-3.1-8B", "model.layers.7.self_attn"),
        ("blocks.2.hook_resid_pre", "gpt2-small", "transformer.h.2.input"),
        ("blocks.2.hook_mlp_out", "gpt2", "transformer.h.2.mlp"),
        ("blocks.2.attn.hook_z", "gpt2", "transformer.h.2.attn.c_proj.input"),
        ("blocks.4.hook_resid_post", "pythia-70m-deduped", "gpt_neox.layers.4"),
        ("blocks.4.hook_attn_out", "EleutherAI/pythia-70m", "gpt_neox.layers.4.attention"),
        ("blocks.5.hook_mlp_out", "gemma-2-2b", "model.layers.5.post_feedforward_layernorm"),
        ("model.layers.5", "anything", "model.layers.5"),  # a module path already
    ],
)
def test_transformer_lens_names(hook, model, path):
    assert N.transformer_lens_to_module(hook, model) == path
    if hook.startswith("blocks."):
        assert N.module_to_transformer_lens(path, model) == hook


def test_untranslatable_names_are_refused():
    with pytest.raises(HookpointError, match=r"'blocks.3.hook_mlp_in'.*known are"):
        N.transformer_lens_to_module("blocks.3.hook_mlp_in", "gpt2")
    assert N.relative_to_module("layers.3", "meta-llama/Meta-Llama-3-8B") == "model.layers.3"
    assert N.relative_to_module("h.3.mlp", "gpt2") == "transformer.h.3.mlp"
    assert N.hub_model_id("gemma-2-2b") == "google/gemma-2-2b"


def test_registry_is_shipped_and_maps_folders():
    entry = releases()["gemma-scope-2b-pt-res"]
    assert (entry["repo_id"], entry["format"], entry["base_model"]) == (
        "google/gemma-scope-2b-pt-res", "gemma_scope", "google/gemma-2-2b")  # fmt: skip
    found = match_release(entry, "layer_20/width_16k/average_l0_71")
    assert (found.hookpoint, found.num_latents, found.l0) == ("model.layers.20", 16384, 71.0)
    assert match_release(releases()["gemma-scope-2b-pt-att"], "layer_2/width_65k/average_l0_9").hookpoint == (
        "model.layers.2.self_attn.o_proj.input")  # fmt: skip
    llama = releases()["llama-scope-lxm-32x"]
    assert match_release(llama, "Llama3_1-8B-Base-L7M-32x")[1:3] == ("model.layers.7.mlp", 131072)


# ---- export ---------------------------------------------------------------------------------------------------------


def test_exports_load_in_the_packages_own_loaders():
    """The script loaded hf_sae's exports with `SAE.load_from_disk` and `SparseCoder.load_from_disk`; this checks its
    record, and that hf_sae still writes the very files it checked."""
    report = json.loads((FIXTURES / "exports" / "exports.json").read_text())
    assert {row["format"] for row in report.values()} == {"saelens", "sparsify"} and len(report) >= 6
    for name, row in report.items():
        assert row["latents_max_relative_error"] < 1e-5 and row["reconstruction_max_relative_error"] < 1e-5, name
    for name, row in report.items():
        folder, to = row["source"], row["format"]
        fresh = export_sae(SaeModel.from_folder(FIXTURES / folder), Path(f"/tmp/hf-sae-export-check/{name}"), to)
        committed = FIXTURES / "exports" / name
        weights = "sae_weights.safetensors" if to == "saelens" else "sae.safetensors"
        a, b = load_file(fresh / weights), load_file(committed / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        cfg = lambda p: {k: v for k, v in json.loads((p / "cfg.json").read_text()).items() if k != "metadata"}  # noqa: E731
        assert cfg(fresh) == cfg(committed), name


def test_saelens_export_names_the_module_and_round_trips(tmp_path):
    sae = SaeModel.from_folder(FIXTURES / "saelens_jumprelu")
    out = export_sae(sae, tmp_path / "out", "saelens")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "model.layers.4.post_feedforward_layernorm"
    assert cfg["metadata"]["model_class_name"] == "AutoModelForCausalLM"
    assert_matches(SaeModel.from_pretrained(out), "saelens_jumprelu")


def test_sparsify_export_folds_b_dec_and_refuses_other_architectures(tmp_path):
    topk = SaeModel.from_folder(FIXTURES / "dictionary_learning_run/trainer_2")
    config = SaeConfig(**{**topk.config.to_dict(), "apply_b_dec_to_input": False})
    shifted = SaeModel(config)
    shifted.load_state_dict(topk.state_dict())
    out = export_sae(shifted, tmp_path / "sp", "sparsify")
    back = SaeModel.from_folder(out)  # reads x - b_dec, with b_dec's share moved into the bias
    x = expected("dictionary_learning_AutoEncoderTopK")["x"]
    with torch.no_grad():
        assert relative_error(back(x).reconstruction, shifted(x).reconstruction) < 1e-5
    with pytest.raises(SaeConfigError, match="sparsify holds top-k SAEs only; this SAE is 'gated'"):
        export_sae(SaeModel.from_folder(FIXTURES / "saelens_gated"), tmp_path / "g", "sparsify")


def test_convert_command(tmp_path, capsys):
    assert main(["convert", str(FIXTURES / "saelens_gated"), str(tmp_path / "hf"), "--to", "hf_sae"]) == 0
    assert "transformer.h.1.attn: hf_sae SAE written to" in capsys.readouterr().out
    assert_matches(SaeModel.from_pretrained(tmp_path / "hf"), "saelens_gated")
    with pytest.raises(ArgumentError, match="exists and is not empty"):
        run_convert(ConvertArguments(src=str(FIXTURES / "saelens_gated"), dst=str(tmp_path / "hf"), to="saelens"))
    assert main(["convert", str(FIXTURES / "saelens_gated"), str(tmp_path / "x"), "--to", "neuronpad"]) == 1
    assert "hf-sae convert: error: argument --to: invalid choice: 'neuronpad'" in capsys.readouterr().err
    assert main(["convert", str(FIXTURES / "saelens_gated"), str(tmp_path / "x"), "--to", "neuronpedia"]) == 1
    assert "hf-sae features --sae" in capsys.readouterr().err  # Neuronpedia takes the features, which this SAE lacks


# ---- the Hub: a Gemma-Scope-layout repo and the README quickstart ---------------------------------------------------


@pytest.fixture
def gemma_hub(monkeypatch, tmp_path):
    with HubServer(orgs={"google": {"alice"}}) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        api = HfApi(token=ALICE)
        api.create_repo("google/gemma-scope-2b-pt-res")
        params = FIXTURES / CASES["gemma_scope"][0] / "params.npz"
        with np.load(params) as data:
            other = {k: data[k] * 2 for k in data.files}
        np.savez(tmp_path / "other.npz", **other)
        api.upload_file(path_or_fileobj=str(params), path_in_repo="layer_3/width_256/average_l0_40/params.npz",
                        repo_id="google/gemma-scope-2b-pt-res")  # fmt: skip
        for path in ("layer_3/width_256/average_l0_90/params.npz", "layer_5/width_16k/average_l0_40/params.npz"):
            api.upload_file(path_or_fileobj=str(tmp_path / "other.npz"), path_in_repo=path,
                            repo_id="google/gemma-scope-2b-pt-res")  # fmt: skip
        yield server, tmp_path / "hf-home"


def tiny_gemma2() -> Gemma2ForCausalLM:
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=99, hidden_size=64, intermediate_size=96, num_hidden_layers=5, head_dim=16,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return Gemma2ForCausalLM(config).eval()


def test_gemma_scope_from_the_hub_by_release_name(gemma_hub):
    server, hf_home = gemma_hub
    # The README quickstart, with a tiny Gemma 2 standing in for google/gemma-2-2b.
    saes = load_saes("gemma-scope-2b-pt-res", hookpoints=["model.layers.3"], width=256, l0=40)
    lm = tiny_gemma2()
    input_ids = torch.tensor([[1, 5, 17, 42, 8, 3]])
    with SaeHooks(lm, saes, all_tokens=True).record() as recorder, torch.no_grad():
        lm(input_ids)
    sae = saes["model.layers.3"]
    assert sae.config.base_model_name_or_path == "google/gemma-2-2b"
    with torch.no_grad():
        hidden = lm(input_ids, output_hidden_states=True).hidden_states[4]  # the output of model.layers.3
        assert torch.allclose(recorder.cat("model.layers.3"), sae.encode(hidden).flatten(0, 1), atol=1e-5)
    downloaded = {p.parent.name for p in hf_home.rglob("params.npz")}
    assert downloaded == {"average_l0_40"} and len(list(hf_home.rglob("params.npz"))) == 1  # only the one folder
    assert_matches(sae, "gemma_scope")

    with pytest.raises(ArgumentError, match=r"2 SAEs for 'model.layers.3'.*average_l0_40.*average_l0_90.*l0="):
        load_saes("gemma-scope-2b-pt-res", hookpoints=["model.layers.3"])
    with pytest.raises(HookpointError, match=r"no SAE for hookpoint.*width=4096.*model.layers.3, model.layers.5"):
        load_saes("gemma-scope-2b-pt-res", hookpoints=["model.layers.5"], width=4096)
    by_repo = SaeModel.from_pretrained("google/gemma-scope-2b-pt-res", subfolder="layer_3/width_256/average_l0_40")
    assert by_repo.config.hookpoint == "model.layers.3"
    assert torch.equal(by_repo.W_enc, sae.W_enc)
    auto = AutoModel.from_pretrained("google/gemma-scope-2b-pt-res", subfolder="layer_3/width_256/average_l0_40")
    assert type(auto) is SaeModel and torch.equal(auto.W_enc, sae.W_enc)

    # Offline, what was downloaded loads from the Hub cache alone.
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
        with pytest.raises(HubError, match="could not be reached"):  # the Hub is really out of reach
            load_saes("gemma-scope-2b-pt-res", hookpoints=["model.layers.3"], width=256, l0=40)
        offline = load_saes("gemma-scope-2b-pt-res", hookpoints=["model.layers.3"], width=256, l0=40,
                            local_files_only=True)  # fmt: skip
        assert torch.equal(offline["model.layers.3"].W_enc, sae.W_enc)
        for load in (SaeModel.from_pretrained, AutoModel.from_pretrained):
            again = load("google/gemma-scope-2b-pt-res", subfolder="layer_3/width_256/average_l0_40",
                         local_files_only=True)  # fmt: skip
            assert torch.equal(again.W_enc, sae.W_enc)


def test_transcoder_exports_refuse_what_the_target_format_cannot_hold(tmp_path):
    gated = SaeModel(SaeConfig(d_in=8, num_latents=16, architecture="gated", hookpoint="model.layers.1.mlp.input",
                               output_hookpoint="model.layers.1.mlp", apply_b_dec_to_input=False))  # fmt: skip
    with pytest.raises(SaeConfigError, match=r"SAELens' transcoders are relu or jumprelu .*transcoder is 'gated'"):
        export_sae(gated, tmp_path / "a", "saelens")
    across = SaeModel(SaeConfig(d_in=8, num_latents=16, k=2, hookpoint="model.layers.1.input",
                                output_hookpoint="model.layers.2", apply_b_dec_to_input=False))  # fmt: skip
    with pytest.raises(
        SaeConfigError, match=r"predicts a module's output from its input.*reads 'model.layers.1.input'"
    ):
        export_sae(across, tmp_path / "b", "sparsify")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- names that become paths ----------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def foreign_pair(folder: Path) -> Path:
    """Two SAELens SAEs in `folder`, the second's `hook_name` a path out of any destination: `../victim`."""
    for name, hook in (("a", "model.layers.1"), ("b", "../victim")):
        export_sae(SaeModel(SaeConfig(d_in=8, num_latents=16, k=2, hookpoint="model.layers.1")), folder / name,
                   "saelens")  # fmt: skip
        cfg = json.loads((folder / name / "cfg.json").read_text())
        cfg["metadata"]["hook_name"] = hook
        (folder / name / "cfg.json").write_text(json.dumps(cfg))
    return folder


def a_world_with_a_victim(tmp_path: Path) -> Path:
    (tmp_path / "victim").mkdir(parents=True)
    (tmp_path / "victim" / "keep.txt").write_text("what the user keeps beside the destination")
    return tmp_path / "out"


def test_the_payload_of_a_path_as_hookpoint_is_live(tmp_path):
    """The condition: a writer handed `dst / '../victim'` replaces the folder beside dst, deleting what it held."""
    dst = a_world_with_a_victim(tmp_path)
    assert (dst / "../victim").resolve() == (tmp_path / "victim").resolve()
    export_sae(SaeModel(SaeConfig(d_in=8, num_latents=16, k=2)), dst / "../victim", "saelens")
    assert not (tmp_path / "victim" / "keep.txt").exists()


def test_a_foreign_hookpoint_that_is_a_path_is_refused_before_anything_is_written(tmp_path):
    src, dst = foreign_pair(tmp_path / "src"), a_world_with_a_victim(tmp_path / "world")
    before = snapshot(tmp_path)
    for to in ("hf_sae", "saelens", "sparsify"):
        with pytest.raises(HookpointError, match=r"Hook '\.\./victim' must be a folder name: .*without '/'"):
            run_convert(ConvertArguments(src=str(src), dst=str(dst), to=to, overwrite=True))
    assert snapshot(tmp_path) == before  # the victim's file is there, nothing was written
    with pytest.raises(HookpointError, match=r"'\.\./victim' must be a folder name"):
        SaeModel.from_pretrained(src / "b")  # loading it alone says the same


def test_a_foreign_hookpoint_that_is_a_path_is_refused_from_a_hub_repo(tmp_path, monkeypatch):
    src, dst = foreign_pair(tmp_path / "src"), a_world_with_a_victim(tmp_path / "world")
    with HubServer() as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        api = HfApi(token=ALICE)
        api.create_repo("alice/foreign")
        api.upload_folder(repo_id="alice/foreign", folder_path=str(src))
        assert {"a/cfg.json", "b/cfg.json"} <= set(api.list_repo_files("alice/foreign"))
        before = snapshot(tmp_path / "world")
        with pytest.raises(HookpointError, match=r"Hook '\.\./victim' must be a folder name"):
            run_convert(ConvertArguments(src="alice/foreign", dst=str(dst), to="hf_sae", overwrite=True))
        assert snapshot(tmp_path / "world") == before


# ---- NaN or inf weights are refused on convert ----------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["saelens_standard", "sparsify_run/layers.3"])
def test_non_finite_weights_are_refused_on_convert_naming_the_tensor(tmp_path, fixture):
    folder = copy(fixture, tmp_path)
    weights_file = next(folder.glob("*.safetensors"))
    weights = load_file(weights_file)
    name = next(k for k in weights if k in ("W_enc", "encoder.weight"))
    weights[name][3, 5] = float("nan")
    save_file(weights, weights_file)
    assert load_file(weights_file)[name].isnan().sum() == 1  # the file really holds a NaN
    for to in ("hf_sae", "saelens", "sparsify"):
        with pytest.raises(WeightsError, match=r"holds non-finite weights: 'W_enc' \(1 of [\d,]+ values NaN or inf\)"):
            run_convert(ConvertArguments(src=str(folder), dst=str(tmp_path / to), to=to))
        assert not (tmp_path / to).exists()
    sae = SaeModel(SaeConfig(d_in=8, num_latents=16, k=2))
    with torch.no_grad():
        sae.b_dec[2] = float("inf")
    sae.save_pretrained(tmp_path / "hf")  # hf_sae's own format, inf in one bias
    with pytest.raises(WeightsError, match=r"hf holds non-finite weights: 'b_dec' \(1 of 8 values NaN or inf\)"):
        run_convert(ConvertArguments(src=str(tmp_path / "hf"), dst=str(tmp_path / "out"), to="saelens"))
    assert not (tmp_path / "out").exists()
