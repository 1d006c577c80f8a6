"""circuit-tracer's transcoder formats, against what circuit-tracer 0.5.0 computed from hf_sae's exports
(tests/fixtures/circuit_tracer/make_fixtures.py ran it in a throwaway venv; CI needs no circuit-tracer)."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from hf_sae import (
    CltConfig,
    CltModel,
    FileFormatError,
    SaeConfig,
    SaeConfigError,
    SaeModel,
    SaeNotFoundError,
    load_saes,
    load_transcoders,
)
from hf_sae.convert.circuit_tracer import layer_sites, to_circuit_tracer
from hf_sae.formats.circuit_tracer import read_cross_layer_transcoder, read_transcoder_set

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
SETS = ("set_jumprelu_skip", "set_batchtopk", "set_relu")
CLTS = ("clt_jumprelu", "clt_batchtopk")
X = load_file(FIXTURES / "inputs.safetensors")["x"]  # (layer, token, d)


def sae_from(config, tensors) -> SaeModel:
    with torch.device("meta"):
        sae = SaeModel(config)
    sae.load_state_dict(tensors, strict=True, assign=True)
    return sae.eval()


def saved_prediction(name: str, by: str) -> torch.Tensor:
    return load_file(FIXTURES / name / f"{by}_outputs.safetensors")["prediction"]


@pytest.mark.parametrize("name", SETS + CLTS)
def test_circuit_tracer_computed_what_hf_sae_computes_from_the_export(name):
    hf_sae, circuit_tracer = saved_prediction(name, "hf_sae"), saved_prediction(name, "circuit_tracer")
    assert hf_sae.abs().max() > 0.5  # the transcoders predict something, so agreement means something
    torch.testing.assert_close(circuit_tracer, hf_sae, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("name", SETS)
def test_a_transcoder_set_reads_back_into_saes_that_predict_as_circuit_tracer(name):
    layers = read_transcoder_set(FIXTURES / name)
    assert sorted(layers) == [0, 1, 2]
    config, _ = layers[1]
    assert (config.hookpoint, config.output_hookpoint) == layer_sites(1) and not config.apply_b_dec_to_input
    saes = {layer: sae_from(*layers[layer]) for layer in layers}
    prediction = torch.stack([saes[layer](X[layer]).reconstruction for layer in saes])
    torch.testing.assert_close(prediction, saved_prediction(name, "circuit_tracer"), atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("name", CLTS)
def test_a_cross_layer_transcoder_reads_back_and_predicts_as_circuit_tracer(name):
    clt = CltModel.from_tensors(*read_cross_layer_transcoder(FIXTURES / name))
    assert clt.config.architecture == "jumprelu" and clt.config.n_layers == 3
    prediction = clt(X.transpose(0, 1)).reconstruction.transpose(0, 1)
    torch.testing.assert_close(prediction, saved_prediction(name, "circuit_tracer"), atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("name", SETS + CLTS)
def test_export_of_what_was_read_writes_the_same_tensors(tmp_path, name):
    if name in SETS:
        saes = {layer: sae_from(*pair) for layer, pair in read_transcoder_set(FIXTURES / name).items()}
        exported = to_circuit_tracer(saes, tmp_path / name)
    else:
        exported = to_circuit_tracer(
            CltModel.from_tensors(*read_cross_layer_transcoder(FIXTURES / name)), tmp_path / name
        )
    for original in sorted(FIXTURES.glob(f"{name}/*.safetensors")):
        if original.name.endswith("_outputs.safetensors"):
            continue
        again, before = load_file(exported / original.name), load_file(original)
        assert set(again) == set(before) and all(torch.equal(again[k], before[k]) for k in before), original.name
    assert (exported / "config.yaml").read_text() == (FIXTURES / name / "config.yaml").read_text()


def test_what_circuit_tracer_cannot_hold_is_refused_naming_why(tmp_path):
    def transcoder(layer, architecture="topk", **fields):
        hookpoint, output = layer_sites(layer)
        k = 2 if "topk" in architecture else None
        config = SaeConfig(d_in=8, num_latents=16, architecture=architecture, k=k, hookpoint=hookpoint,
                           output_hookpoint=output, d_out=8, apply_b_dec_to_input=False, **fields)  # fmt: skip
        return SaeModel(config)

    with pytest.raises(SaeConfigError, match=r"JumpReLU or ReLU transcoders only, so a 'topk' one \(layer 0\)"):
        to_circuit_tracer({0: transcoder(0)}, tmp_path / "topk")
    with pytest.raises(SaeConfigError, match="has no inference threshold yet"):
        to_circuit_tracer({0: transcoder(0, "batchtopk")}, tmp_path / "untrained")
    with pytest.raises(Exception, match=r"one transcoder for every layer from 0; got layers \[0, 2\]"):
        to_circuit_tracer({0: transcoder(0, "relu"), 2: transcoder(2, "relu")}, tmp_path / "gap")
    clt = CltModel(CltConfig(n_layers=2, d_in=8, num_latents=16, architecture="topk", k=2))
    with pytest.raises(SaeConfigError, match="'topk'"):
        to_circuit_tracer(clt, tmp_path / "clt")
    assert not any(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("model_kind: sparse_coder\n")
    with pytest.raises(FileFormatError, match=r"should name `model_kind` transcoder_set or cross_layer_transcoder"):
        read_transcoder_set(tmp_path / "bad")


# ---- the fixtures through load_transcoders and load_saes ------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_a_transcoder_set_loads_through_load_transcoders_and_load_saes_and_predicts_as_circuit_tracer(name):
    transcoders = load_transcoders(FIXTURES / name)
    saes = load_saes(FIXTURES / name)
    assert list(transcoders) == [0, 1, 2] and list(saes) == [layer_sites(layer)[0] for layer in range(3)]
    expected = saved_prediction(name, "circuit_tracer")
    for layer, sae in transcoders.items():
        assert saes[layer_sites(layer)[0]].config.to_dict() == sae.config.to_dict()
        torch.testing.assert_close(sae(X[layer]).reconstruction, expected[layer], atol=2e-6, rtol=1e-6)
        torch.testing.assert_close(saes[layer_sites(layer)[0]](X[layer]).reconstruction, expected[layer],
                                   atol=2e-6, rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("name", CLTS)
def test_a_cross_layer_transcoder_loads_through_load_transcoders_and_load_saes_points_there(name):
    clt = load_transcoders(FIXTURES / name)
    assert isinstance(clt, CltModel)
    prediction = clt(X.transpose(0, 1)).reconstruction.transpose(0, 1)
    torch.testing.assert_close(prediction, saved_prediction(name, "circuit_tracer"), atol=2e-6, rtol=1e-6)
    with pytest.raises(SaeNotFoundError, match=r"holds a cross-layer transcoder.*hf_sae.load_transcoders"):
        load_saes(FIXTURES / name)


def test_a_config_yaml_without_its_weights_is_refused_naming_the_file(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "config.yaml").write_text((FIXTURES / "set_relu" / "config.yaml").read_text())
    with pytest.raises(FileFormatError, match=r"names model_kind 'transcoder_set', but .* lacks layer_0.safetensors"):
        load_transcoders(tmp_path / "set")


# ---- Gemma Scope 2's layout (config.yaml listing one file per layer), against circuit-tracer's own loaders ----------

GEMMA_SCOPE_2_SET, GEMMA_SCOPE_2_CLT = FIXTURES / "gemma_scope_2_set", FIXTURES / "gemma_scope_2_clt"
FLOAT32 = {"atol": 2e-6, "rtol": 1e-6}  # float32 rounding: the same products summed in another order


def test_a_gemma_scope_2_transcoder_set_loads_and_encodes_and_predicts_as_circuit_tracer():
    expected = load_file(GEMMA_SCOPE_2_SET / "circuit_tracer_outputs.safetensors")
    transcoders = load_transcoders(GEMMA_SCOPE_2_SET)
    assert list(transcoders) == [0, 1, 2] and 0 < int((expected["encode"] != 0).sum()) < expected["encode"].numel()
    for layer, sae in transcoders.items():
        config = sae.config
        assert (config.architecture, config.skip_connection, config.base_model_name_or_path) == (
            "jumprelu", True, "google/gemma-3-270m")  # fmt: skip
        assert (config.hookpoint, config.output_hookpoint) == (
            f"model.layers.{layer}.mlp.input", f"model.layers.{layer}.post_feedforward_layernorm")  # fmt: skip
        assert bool((sae.threshold < 0).any())  # pre * [pre > θ] for θ < 0 too, as circuit-tracer computes it
        output = sae(X[layer])
        torch.testing.assert_close(output.latents, expected["encode"][layer], **FLOAT32)
        torch.testing.assert_close(output.reconstruction, expected["reconstruction"][layer], **FLOAT32)
    saes = load_saes(GEMMA_SCOPE_2_SET)
    assert [sae.config.to_dict() for sae in saes.values()] == [sae.config.to_dict() for sae in transcoders.values()]


def test_a_gemma_scope_2_clt_loads_and_encodes_and_predicts_as_circuit_tracer():
    expected = load_file(GEMMA_SCOPE_2_CLT / "circuit_tracer_outputs.safetensors")
    clt = load_transcoders(GEMMA_SCOPE_2_CLT)
    assert isinstance(clt, CltModel) and (clt.config.n_layers, clt.config.d_in, clt.config.num_latents) == (3, 16, 32)
    assert clt.config.output_hookpoints == [f"model.layers.{layer}.post_feedforward_layernorm" for layer in range(3)]
    assert [tuple(clt.get_parameter(f"W_dec.{layer}").shape) for layer in range(3)] == [
        (32, 3 - layer, 16) for layer in range(3)
    ]
    output = clt(X.transpose(0, 1))
    assert expected["reconstruction"].abs().max() > 0.5
    torch.testing.assert_close(output.latents.transpose(0, 1), expected["encode"], **FLOAT32)
    torch.testing.assert_close(output.reconstruction.transpose(0, 1), expected["reconstruction"], **FLOAT32)


def _copy_gemma_scope_2(source: Path, folder: Path, **config_changes) -> Path:
    shutil.copytree(source, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text()) | config_changes
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_gemma_scope_2_files_hf_sae_cannot_read_or_represent_are_refused_naming_why(tmp_path):
    remote = "hf://google/gemma-scope-2-270m-pt/transcoder/layer_0/params.safetensors"
    with pytest.raises(
        FileFormatError, match=r"lists 'hf://google/.*'.*safetensors files inside .*Download the files"
    ):
        load_transcoders(_copy_gemma_scope_2(GEMMA_SCOPE_2_SET, tmp_path / "remote", transcoders=[remote]))
    with pytest.raises(FileFormatError, match=r"lists '\.\./outside\.safetensors'"):
        load_transcoders(
            _copy_gemma_scope_2(GEMMA_SCOPE_2_SET, tmp_path / "outside", transcoders=["../outside.safetensors"])
        )
    with pytest.raises(FileFormatError, match=r"lists 'params_9\.safetensors', but .*params_9\.safetensors does not"):
        load_transcoders(
            _copy_gemma_scope_2(GEMMA_SCOPE_2_CLT, tmp_path / "missing", transcoders=["params_9.safetensors"])
        )
    skip = _copy_gemma_scope_2(GEMMA_SCOPE_2_CLT, tmp_path / "skip")
    params = load_file(skip / "params_1.safetensors")
    assert "affine_skip_connection" not in params
    save_file(params | {"affine_skip_connection": torch.zeros(16, 16)}, skip / "params_1.safetensors")
    with pytest.raises(SaeConfigError, match=r"\['params_1.safetensors'\] hold an `affine_skip_connection`.*no skip"):
        load_transcoders(skip)
