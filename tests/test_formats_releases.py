"""Every release of SAELens' registry by name (hf_sae/formats/saelens_releases.json.gz, written from sae-lens
6.54.12's pretrained_saes.yaml by tests/fixtures/saelens_registry.py): repo, base model, format, and per SAE its
folder, hookpoint, width and L0. The expected values below are read off that YAML by hand."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import HubServer, point_client_at
from huggingface_hub import HfApi

from hf_sae import load_saes
from hf_sae.formats import match_release, releases
from hf_sae.formats.readers import parse_width
from hf_sae.formats.registry import saelens_provenance, saelens_releases

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
OWN = json.loads((Path(__file__).parents[1] / "hf_sae" / "formats" / "releases.json").read_text())

# release -> (repo, base model, format, folder, hookpoint, width, l0), from pretrained_saes.yaml
SAMPLE = {
    "gpt2-small-res-jb-feature-splitting": ("jbloom/GPT2-Small-Feature-Splitting-Experiment-Layer-8", "gpt2",
        "saelens", "blocks.8.hook_resid_pre_768", "transformer.h.8.input", None, 36.0),
    "mistral-7b-res-wg": ("JoshEngels/Mistral-7B-Residual-Stream-SAEs", "mistralai/Mistral-7B-v0.1", "saelens",
        "mistral_7b_layer_16", "model.layers.16.input", None, 74.0),
    "gemma-scope-2b-pt-res-canonical": ("google/gemma-scope-2b-pt-res", "google/gemma-2-2b", "gemma_scope",
        "layer_3/width_65k/average_l0_89", "model.layers.3", 65536, None),
    "gemma-scope-2-4b-pt-transcoders-all": ("google/gemma-scope-2-4b-pt", "google/gemma-3-4b-pt", "gemma_scope_2",
        "transcoder_all/layer_0_width_16k_l0_big", "model.layers.0.mlp.input", 16384, 60.0),
    "llama_scope_lxa_32x": ("fnlp/Llama3_1-8B-Base-LXA-32x", "meta-llama/Llama-3.1-8B", "llama_scope",
        "Llama3_1-8B-Base-L1A-32x", "model.layers.1.self_attn", None, 50.0),
    "qwen-scope-3-1.7b-base-w32k-l50": ("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", "Qwen/Qwen3-1.7B-Base",
        "qwen_scope", "layer1.sae.pt", "model.layers.1", 32768, 50.0),
}  # fmt: skip


def test_the_registry_is_sae_lens_whole_and_says_where_it_came_from():
    about = saelens_provenance()
    assert about["sae_lens"] == "6.54.12" and about["date"] == "2026-12-07"
    assert about["releases"] == len(saelens_releases()) == 170 and about["saes"] == 13857
    assert set(saelens_releases()) <= set(releases())  # every SAELens release id resolves
    assert sum(len(e["paths"]) for e in saelens_releases().values()) > 13000


@pytest.mark.parametrize("name", list(SAMPLE))
def test_a_release_resolves_to_its_repo_folder_and_hookpoint(name):
    repo, model, fmt, folder, hookpoint, width, l0 = SAMPLE[name]
    entry = releases()[name]
    assert (entry["repo_id"], entry["base_model"], entry["format"]) == (repo, model, fmt)
    found = match_release(entry, folder)
    assert (found.format, found.hookpoint, found.num_latents, found.l0) == (fmt, hookpoint, width, l0)
    assert match_release(entry, folder + "x") is None


def test_hf_sae_s_own_release_names_keep_their_entries():
    for name, entry in OWN.items():
        if not name.startswith("_"):
            assert releases()[name] == entry
    assert "paths" not in releases()["gemma-scope-2b-pt-res"]


def test_gemma_scope_widths_are_powers_of_two():
    assert [parse_width(w) for w in ("16k", "65k", "131k", "262k", "1m", "256")] == [
        16384, 65536, 131072, 262144, 1048576, 256,
    ]  # fmt: skip


def test_a_release_only_sae_lens_lists_loads_from_the_hub_by_hookpoint(monkeypatch, tmp_path):
    """`gemma-scope-2b-pt-res-canonical` is in SAELens' registry, not hf_sae's own: its canonical folder of layer 3
    at width 16k is found by hookpoint and width, and loads (the fixture's weights stand in for the real ones)."""
    with HubServer(orgs={"google": {"alice"}}) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        api = HfApi(token="hf_alice_write")
        api.create_repo("google/gemma-scope-2b-pt-res")
        params = FIXTURES / "gemma_scope/layer_3/width_256/average_l0_40/params.npz"
        with np.load(params) as data:
            other = {k: data[k] * 2 for k in data.files}
        np.savez(tmp_path / "other.npz", **other)
        for path, source in (("layer_3/width_16k/average_l0_59", params), ("layer_3/width_16k/average_l0_14", params),
                             ("layer_3/width_65k/average_l0_89", tmp_path / "other.npz")):  # fmt: skip
            api.upload_file(path_or_fileobj=str(source), path_in_repo=f"{path}/params.npz",
                            repo_id="google/gemma-scope-2b-pt-res")  # fmt: skip
        saes = load_saes("gemma-scope-2b-pt-res-canonical", hookpoints=["model.layers.3"], width=16384)
    sae = saes["model.layers.3"]
    assert sae.config.hookpoint == "model.layers.3" and sae.config.base_model_name_or_path == "google/gemma-2-2b"
    with np.load(params) as data:
        assert torch.equal(sae.W_dec, torch.from_numpy(data["W_dec"]).float())
