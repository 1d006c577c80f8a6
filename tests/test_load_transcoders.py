"""`hf_sae.load_transcoders`: per-layer and cross-layer transcoders from every source attribution takes (hf_sae's
folders, a saved CltModel, circuit-tracer's folders), and `hf-sae convert --to circuit_tracer` round trips."""

import pytest
import torch

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
from hf_sae.cli import main
from hf_sae.convert.circuit_tracer import to_circuit_tracer
from hf_sae.hub import save_saes

LAYERS, WIDTH, LATENTS = 3, 12, 20


def random_transcoder(layer: int, architecture: str = "jumprelu", width: int = WIDTH, skip: bool = False,
                      base_model: str | None = None, seed: int = 0) -> SaeModel:  # fmt: skip
    """A transcoder of layer `layer` (reads its MLP input, predicts its MLP output) with every tensor random and
    nonzero, so that a tensor dropped or mixed up on the way shows."""
    k = 3 if "topk" in architecture else None
    config = SaeConfig(d_in=width, num_latents=LATENTS, architecture=architecture, k=k, d_out=width,
                       hookpoint=f"model.layers.{layer}.mlp.input", output_hookpoint=f"model.layers.{layer}.mlp",
                       apply_b_dec_to_input=False, skip_connection=skip,
                       base_model_name_or_path=base_model)  # fmt: skip
    torch.manual_seed(seed + layer)
    sae = SaeModel(config)
    with torch.no_grad():
        for name, tensor in sae.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * (0.4 if name.startswith("W_") else 0.05))
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.1)
    return sae.eval()


def random_clt(n_layers: int = LAYERS, architecture: str = "jumprelu", width: int = WIDTH) -> CltModel:
    torch.manual_seed(1)
    k = 3 if architecture == "topk" else None
    clt = CltModel(CltConfig(n_layers=n_layers, d_in=width, num_latents=LATENTS, architecture=architecture, k=k))
    with torch.no_grad():
        for tensor in clt.parameters():
            tensor.copy_(torch.randn_like(tensor) * 0.3)
        if architecture == "jumprelu":
            clt.threshold.copy_(torch.rand_like(clt.threshold) * 0.1)
    return clt.eval()


def save_transcoder_set(folder, architecture: str = "jumprelu", **kwargs) -> dict[int, SaeModel]:
    saes = {layer: random_transcoder(layer, architecture, **kwargs) for layer in range(LAYERS)}
    save_saes({sae.config.hookpoint: sae for sae in saes.values()}, folder)
    return saes


def assert_equal_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[name], sb[name]) for name in sa), [n for n in sa if not torch.equal(sa[n], sb[n])]


# ---- each source --------------------------------------------------------------------------------------------------


def test_hf_sae_transcoders_load_keyed_by_the_layer_whose_mlp_they_replace(tmp_path):
    saes = save_transcoder_set(tmp_path / "set", skip=True)
    loaded = load_transcoders(tmp_path / "set", dtype=torch.float64)
    assert list(loaded) == [0, 1, 2]
    for layer, sae in saes.items():
        assert (
            loaded[layer].config.hookpoint == f"model.layers.{layer}.mlp.input"
            and loaded[layer].dtype == torch.float64
        )
        assert_equal_tensors(loaded[layer].to(torch.float32), sae)


def test_a_saved_clt_loads_as_a_clt(tmp_path):
    clt = random_clt()
    clt.save_pretrained(tmp_path / "clt")
    loaded = load_transcoders(tmp_path / "clt")
    assert isinstance(loaded, CltModel)
    assert_equal_tensors(loaded, clt)


def test_sources_that_hold_no_transcoders_are_refused_naming_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(SaeNotFoundError, match=r"Found no SAE in .*empty.*a circuit-tracer folder \(config.yaml"):
        load_transcoders(tmp_path / "empty")
    sae = SaeModel(SaeConfig(d_in=WIDTH, num_latents=LATENTS, architecture="relu", hookpoint="model.layers.0"))
    save_saes({"model.layers.0": sae}, tmp_path / "residual")
    with pytest.raises(SaeConfigError, match=r"not MLP transcoders \(\['model.layers.0'\]\)"):
        load_transcoders(tmp_path / "residual")
    with pytest.raises(SaeNotFoundError, match="does not exist locally"):
        load_transcoders(str(tmp_path / "missing"))


# ---- convert --to circuit_tracer and back ---------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["jumprelu", "relu"])
def test_a_transcoder_set_round_trips_through_circuit_tracer(tmp_path, capsys, architecture):
    saes = save_transcoder_set(tmp_path / "set", architecture, skip=architecture == "jumprelu")
    rc = main(["convert", "--src", str(tmp_path / "set"), "--dst", str(tmp_path / "ct"), "--to", "circuit_tracer"])
    assert rc == 0 and "transcoder_set: circuit_tracer folder written to" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == ["config.yaml"] + [
        f"layer_{layer}.safetensors" for layer in range(LAYERS)
    ]
    loaded = load_transcoders(tmp_path / "ct")
    assert list(loaded) == [0, 1, 2]
    for layer, sae in saes.items():
        assert loaded[layer].config.architecture == architecture
        assert_equal_tensors(loaded[layer], sae)


def test_a_clt_round_trips_through_circuit_tracer(tmp_path, capsys):
    clt = random_clt()
    clt.save_pretrained(tmp_path / "clt")
    rc = main(["convert", str(tmp_path / "clt"), str(tmp_path / "ct"), "--to", "circuit_tracer"])
    assert rc == 0 and "cross_layer_transcoder: circuit_tracer folder written to" in capsys.readouterr().out
    assert (tmp_path / "ct" / "W_dec_2.safetensors").is_file()
    loaded = load_transcoders(tmp_path / "ct")
    assert isinstance(loaded, CltModel) and loaded.config.architecture == "jumprelu"
    assert_equal_tensors(loaded, clt)


def test_convert_refuses_topk_for_circuit_tracer_naming_why_and_writes_nothing(tmp_path, capsys):
    save_transcoder_set(tmp_path / "set", "topk")
    rc = main(["convert", "--src", str(tmp_path / "set"), "--dst", str(tmp_path / "ct"), "--to", "circuit_tracer"])
    err = capsys.readouterr().err
    assert rc == 1 and "JumpReLU or ReLU transcoders only, so a 'topk' one (layer 0)" in err
    assert not (tmp_path / "ct").exists()
    random_clt(architecture="topk").save_pretrained(tmp_path / "clt")
    assert main(["convert", str(tmp_path / "clt"), str(tmp_path / "ct"), "--to", "circuit_tracer"]) == 1
    assert "'topk'" in capsys.readouterr().err and not (tmp_path / "ct").exists()
    assert main(["convert", str(tmp_path / "set"), str(tmp_path / "ct"), "--to", "circuit_tracer",
                 "--hookpoints", "model.layers.0.mlp.input"]) == 1  # fmt: skip
    assert "--hookpoints choose SAEs, but --to circuit_tracer writes the whole" in capsys.readouterr().err


def test_a_circuit_tracer_set_written_by_hf_sae_loads_through_load_saes_by_hookpoint(tmp_path):
    saes = {layer: random_transcoder(layer) for layer in range(LAYERS)}
    to_circuit_tracer(saes, tmp_path / "ct")
    loaded = load_saes(tmp_path / "ct", hookpoints=["model.layers.2.mlp.input"])
    assert list(loaded) == ["model.layers.2.mlp.input"]
    assert_equal_tensors(loaded["model.layers.2.mlp.input"], saes[2])


def test_load_saes_on_a_damaged_circuit_tracer_folder_gives_its_reason(tmp_path):
    (tmp_path / "config.yaml").write_text("model_kind: [unclosed\n")
    for load in (load_saes, load_transcoders):
        with pytest.raises(FileFormatError, match=r"config.yaml is not valid YAML"):
            load(tmp_path)
