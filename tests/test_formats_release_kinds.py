"""Every release of SAELens' registry by the loader SAELens uses for it: each maps to a reader of hf_sae, or to a
stated refusal. The layouts that only some releases use (Qwen Scope, Goodfire, DeepSeek-R1, hook_z, mwhanna's
transcoders, Llama Scope R1, Gemma Scope 2 and Gemma Scope transcoders) load by release name from the Hub and compute
what SAELens' own loader computes on the same files (tests/fixtures/releases, written by make_release_fixtures.py with
sae-lens 6.54.12); a sample of the registry agrees with SAELens' own `get_pretrained_saes_directory()`."""

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from hub_server import HubServer, point_client_at
from huggingface_hub import HfApi
from safetensors.torch import load_file

from hf_sae import SaeModel, load_saes
from hf_sae.errors import ArgumentError, SaeConfigError, SaeNotFoundError
from hf_sae.formats import MARKERS, detect_format, names, releases
from hf_sae.formats.registry import LOADERS, REFUSED, saelens_provenance, saelens_releases
from hf_sae.formats.release_files import FILE_FORMATS, read_release_file

FIXTURES = Path(__file__).parent / "fixtures" / "releases"
SAMPLE = json.loads((FIXTURES / "saelens_sample.json").read_text())
RELEASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "saelens.json").is_file())
# SAELens' architectures -> hf_sae's (its transcoders are hf_sae SAEs with an output hookpoint)
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "transcoder": "relu",
                 "jumprelu_transcoder": "jumprelu", "jumprelu_skip_transcoder": "jumprelu"}  # fmt: skip


def module_of(hook: str, model: str) -> str:
    """SAELens' hook as a module path. `hook_mlp_in` (TransformerBridge) and `mlp.hook_in` (mwhanna's) name the MLP's
    input as `ln2.hook_normalized` does."""
    for alias in (".hook_mlp_in", ".mlp.hook_in"):
        hook = hook.replace(alias, ".ln2.hook_normalized")
    return names.transformer_lens_to_module(hook, model)


# ---- the classification ---------------------------------------------------------------------------------------------


def test_every_release_maps_to_a_reader_or_a_stated_refusal():
    readers = {*MARKERS, *FILE_FORMATS}
    assert set(LOADERS.values()) <= readers  # each loader's format is one hf_sae reads
    assert {loader or "sae_lens" for loader in LOADERS} | set(REFUSED) == set(SAMPLE["about"]["loaders"])
    assert not set(LOADERS) & set(REFUSED)
    kinds = Counter()
    for name, entry in saelens_releases().items():
        if entry["loader"] in REFUSED:
            assert entry["format"] is None and entry["refused"].startswith(REFUSED[entry["loader"]][:40]), name
        else:
            assert entry["format"] in readers and "refused" not in entry, name
        kinds[entry["format"]] += len(entry["paths"])
    assert sum(kinds.values()) == saelens_provenance()["saes"] == SAMPLE["about"]["saes"] == 13857
    # the counts docs/formats.md gives
    assert kinds[None] == 29 and kinds["gemma_scope_2"] == 8784 and kinds["qwen_scope"] == 544


@pytest.mark.parametrize("name", ["mntss-gemma-2-2b-2.5m-clt-as-per-layer", "temporal-sae-gemma-2-2b"])
def test_a_refused_release_says_why_before_any_download(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing could be downloaded anyway
    with pytest.raises(SaeConfigError, match=r"is refused: .*(cross-layer transcoder|Temporal SAE)"):
        load_saes(name)


# ---- each layout, against SAELens' own loader ----------------------------------------------------------------------


def upload(api: HfApi, repo_id: str, repo: Path) -> None:
    api.create_repo(repo_id)
    api.upload_folder(folder_path=str(repo), repo_id=repo_id)


@pytest.mark.parametrize("release", RELEASES)
def test_a_release_layout_loads_by_name_and_computes_as_saelens_does(release, monkeypatch, tmp_path):
    saelens = json.loads((FIXTURES / release / "saelens.json").read_text())
    entry = releases()[release]
    org = entry["repo_id"].split("/")[0]
    hookpoint = module_of(saelens["hook_name"], entry["base_model"])
    with HubServer(orgs={org: {"alice"}}) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        upload(HfApi(token="hf_alice_write"), entry["repo_id"], FIXTURES / release / "repo")
        saes = load_saes(release, hookpoints=[saelens["sae_id"]])  # by SAELens' SAE id
        if entry["format"] not in FILE_FORMATS:  # a folder: by hookpoint too, narrowed by the registry's width and L0
            sae = entry["paths"][saelens["path"]]
            again = load_saes(release, hookpoints=[hookpoint], width=sae["width"], l0=sae["l0"])
            assert torch.equal(again[hookpoint].W_enc, saes[hookpoint].W_enc)
    assert list(saes) == [hookpoint]  # where SAELens says it reads
    sae = saes[hookpoint]
    config = sae.config
    assert (config.d_in, config.num_latents, config.architecture) == (
        saelens["d_in"], saelens["d_sae"], ARCHITECTURES[saelens["architecture"]],
    )  # fmt: skip
    assert config.apply_b_dec_to_input == saelens["apply_b_dec_to_input"]
    assert config.base_model_name_or_path == entry["base_model"]
    if release != "llama_scope_r1_distill":  # SAELens' getter names Llama-3.1-8B there, its registry the R1 distill
        assert config.base_model_name_or_path == names.hub_model_id(saelens["model_name"])
    if "hook_name_out" in saelens:
        assert config.output_hookpoint == module_of(saelens["hook_name_out"], entry["base_model"])
        assert config.d_out == saelens["d_out"]
        assert config.skip_connection == ("skip" in saelens["architecture"])
    else:
        assert not config.is_transcoder
    if config.architecture == "topk":
        assert config.k == saelens["k"]
    expected = load_file(FIXTURES / release / "expected.safetensors")
    with torch.no_grad():
        out = sae(expected["x"])
    assert (expected["latents"] != 0).any(-1).all()
    torch.testing.assert_close(out.latents, expected["latents"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.reconstruction, expected["reconstruction"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("release", "folder", "hookpoint", "output"),
    [
        ("gemma-scope-2-270m-pt-res", "resid_post/layer_12_width_16k_l0_medium", "model.layers.12", None),
        ("gemma-scope-2-270m-pt-transcoders", "transcoder/layer_9_width_16k_l0_small_affine",
         "model.layers.9.mlp.input", "model.layers.9.post_feedforward_layernorm"),
    ],
)  # fmt: skip
def test_a_gemma_scope_2_folder_loads_by_itself(release, folder, hookpoint, output):
    """A downloaded Gemma Scope 2 folder is detected from its params.safetensors; the site comes from its path, the
    base model from config.json or the repo name in the path."""
    path = FIXTURES / release / "repo" / folder
    assert detect_format(path) == "gemma_scope_2"
    sae = SaeModel.from_folder(path)
    assert (sae.config.hookpoint, sae.config.output_hookpoint) == (hookpoint, output)
    assert sae.config.base_model_name_or_path == "google/gemma-3-270m" and sae.config.num_latents == 128
    expected = load_file(FIXTURES / release / "expected.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(sae(expected["x"]).latents, expected["latents"], rtol=1e-5, atol=1e-5)


def test_a_qwen_scope_file_needs_its_repo_name_for_k(tmp_path):
    release = FIXTURES / "qwen-scope-3-1.7b-base-w32k-l50" / "repo"
    with pytest.raises(SaeConfigError, match=r"k is in its repo name .* 'me/my-copy' does not have that form"):
        read_release_file(release, "qwen_scope", "layer1.sae.pt", {}, "me/my-copy", None)


def test_a_llama_scope_r1_sae_needs_the_registry_s_scale_and_matching_config(tmp_path):
    folder = FIXTURES / "llama_scope_r1_distill" / "repo"
    path = "800M-Slimpajama-0-OpenR1-Math-220k/L1R"
    with pytest.raises(SaeConfigError, match=r"norm_scaling_factor.*release name"):
        read_release_file(folder, "llama_scope_r1", path, {}, "fnlp/Llama-Scope-R1-Distill", None)
    copy = tmp_path / path
    shutil.copytree(folder / path, copy)
    (copy / "config.json").write_text(json.dumps({"d_model": 32, "expansion_factor": 8, "hook_point_in": "x"}))
    with pytest.raises(SaeConfigError, match=r"d_in 32 and 128 latents, but .* says d_model 32 x expansion_factor 8"):
        read_release_file(tmp_path, "llama_scope_r1", path, {"scale": 2.0}, "fnlp/Llama-Scope-R1-Distill", None)


def test_a_release_file_missing_from_the_repo_is_named(monkeypatch, tmp_path):
    release = "qwen-scope-3-1.7b-base-w32k-l50"
    with HubServer(orgs={"Qwen": {"alice"}}) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        upload(HfApi(token="hf_alice_write"), releases()[release]["repo_id"], FIXTURES / release / "repo")
        with pytest.raises(SaeNotFoundError, match=r"lacks \['layer2.sae.pt'\], which SAELens' registry names"):
            load_saes(release, hookpoints=["model.layers.2"])


def test_a_release_pickle_with_code_is_refused_unrun(monkeypatch, tmp_path):
    """A release's `.pt` is read with weights_only=True: a pickle that would run code is refused, and does not run."""
    release, repo = "deepseek-r1-distill-llama-8b-qresearch", tmp_path / "repo"
    repo.mkdir()
    trap = tmp_path / "ran"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (trap,))

    source = FIXTURES / release / "repo" / "DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt"
    torch.save({**torch.load(source, weights_only=True), "extra": Trap()}, repo / source.name)
    with HubServer(orgs={"qresearch": {"alice"}}) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        upload(HfApi(token="hf_alice_write"), releases()[release]["repo_id"], repo)
        with pytest.raises(Exception, match=r"not a plain state dict.*weights_only=True"):
            load_saes(release)
    assert not trap.exists()


# ---- the registry against SAELens' own ------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLE["saes"], ids=lambda s: f"{s['loader']}:{s['release']}")
def test_the_registry_agrees_with_saelens_own(sample):
    """Repo, loader, path and L0 for every sampled SAE; hookpoint and width where SAELens' config getter says them
    without downloading (the others read the repo's own config files)."""
    entry = saelens_releases()[sample["release"]]
    sae = entry["paths"][sample["path"]]
    assert (entry["repo_id"], entry["loader"], sae["id"]) == (sample["repo_id"], sample["loader"], sample["sae_id"])
    assert entry["base_model"] == names.hub_model_id(sample["model"])
    assert sae["l0"] == (sample["l0"] or None)  # SAELens' directory says 0.0 where the registry gives no L0
    if (config := sample["config"]) is not None:
        assert sae["hookpoint"] == module_of(config["hook_name"], entry["base_model"])
        if config.get("d_sae") and sae["width"] is not None:
            assert sae["width"] == config["d_sae"]
    assert SAMPLE["about"]["sae_lens"] == saelens_provenance()["sae_lens"]


def test_the_sample_spans_every_loader_and_checks_hooks_and_widths():
    used = {entry["loader"] for entry in saelens_releases().values()}
    assert {s["loader"] for s in SAMPLE["saes"]} == used == set(SAMPLE["about"]["loaders"]) - {"sparsify"}
    configs = [s for s in SAMPLE["saes"] if s["config"]]
    assert len(SAMPLE["saes"]) >= 20 and len(configs) >= 10
    assert sum(saelens_releases()[s["release"]]["paths"][s["path"]]["width"] is not None for s in configs if
               s["config"].get("d_sae")) >= 5  # fmt: skip


def test_the_formats_page_counts_each_loader_s_releases_and_saes():
    page = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (\d+) \| ([\d,]+) \|[^|]*\| (`\w+`|refused)", page, flags=re.M)
    releases_, saes = Counter(), Counter()
    for entry in saelens_releases().values():
        releases_[entry["loader"]] += 1
        saes[entry["loader"]] += len(entry["paths"])
    assert {row[0] for row in rows} == set(SAMPLE["about"]["loaders"])
    for loader, n_releases, n_saes, reader in rows:
        assert (int(n_releases), int(n_saes.replace(",", ""))) == (releases_[loader], saes[loader]), loader
        expected = "refused" if loader in REFUSED else f"`{LOADERS[None if loader == 'sae_lens' else loader]}`"
        assert reader == expected, loader


def test_sae_ids_of_different_widths_or_l0s_are_refused_together(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = ["layer_12_width_16k_l0_big", "layer_12_width_16k_l0_medium"]  # L0 150 and 60
    with pytest.raises(ArgumentError, match=r"differ in width or L0.*one at a time"):
        load_saes("gemma-scope-2-270m-pt-res", hookpoints=ids)
