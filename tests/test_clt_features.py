"""A cross-layer transcoder's feature metadata, per layer: statistics against a direct computation over every token,
`hf-sae features` on a CLT folder, the labels on attribution graph nodes, and the metadata through the Hub."""

import json

import pytest
import torch
from conftest import make_tiny_lm, save_tiny_llama_and_corpus
from hub_server import HubServer, point_client_at
from huggingface_hub import HfApi
from test_features import counted_by_hand, tiny_tokenizer, token_blocks
from test_load_transcoders import random_clt

import hf_sae.clt_feature_runs as clt_feature_runs
from hf_sae import CltModel, attribute, load_model, load_transcoders
from hf_sae.attribution import graph_json
from hf_sae.cli import main
from hf_sae.clt_features import collect_clt_feature_metadata
from hf_sae.clt_hub import push_clt_folder
from hf_sae.errors import ArgumentError, FeatureMetadataError
from hf_sae.feature_store import LABELS, load_layer_features
from hf_sae.layout import FEATURES

LAYERS, WIDTH, PROMPT, ALICE = 3, 12, "w3 w17 w42 w8 w5", "hf_alice_write"
pytestmark = [pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:It seems that you are about to commit a data file")]  # fmt: skip


def mlp_inputs_by_hand(model, ids: torch.Tensor) -> torch.Tensor:
    """`(blocks, seq, n_layers, d_in)`: every layer's MLP input, from forward pre-hooks on the MLP modules."""
    seen = []
    handles = [
        layer.mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(seen, dim=-2)


@pytest.mark.parametrize("architecture", ["topk", "jumprelu"])
def test_each_layers_statistics_equal_a_direct_computation(architecture):
    lm, tokenizer, ids = make_tiny_lm("llama"), tiny_tokenizer(), token_blocks()
    clt = random_clt(n_layers=3, architecture=architecture, width=lm.hidden_size)
    batches = [ids[i : i + 4] for i in range(0, len(ids), 4)]
    features = collect_clt_feature_metadata(lm.model, tokenizer, clt, batches, top_n=5, before=3, after=2,
                                            outlier_factor=None)  # fmt: skip
    with torch.no_grad():
        z = clt.encode(mlp_inputs_by_hand(lm.model, ids))  # (blocks, seq, n_layers, num_latents)
    counted = counted_by_hand(ids)
    assert sorted(features) == [0, 1, 2]
    for layer, metadata in features.items():
        flat = (z[:, :, layer] * counted[..., None]).reshape(-1, clt.config.num_latents)
        counts = (flat > 0).sum(0)
        stats = metadata.stats
        assert metadata.metadata["hookpoint"] == f"model.layers.{layer}.mlp.input"
        assert metadata.metadata["tokens"] == int(counted.sum())
        assert counts.sum() > 0 and stats["count"].tolist() == counts.tolist()
        torch.testing.assert_close(torch.tensor(stats["frequency"].values), counts.double() / int(counted.sum()))
        fired = counts > 0
        assert torch.equal(torch.tensor(stats["max_activation"].values)[fired], flat.max(0).values[fired])
        # Logit effects: what the latent writes into every layer it reaches, through the final RMSNorm's gain.
        summed = clt.W_dec[layer].detach().sum(1)  # (num_latents, d_out)
        logits = (summed * lm.model.model.norm.weight) @ lm.model.lm_head.weight.T
        assert [list(row) for row in stats["promoted_token_ids"]] == logits.topk(10, dim=1).indices.tolist()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`(lm folder, corpus folder, CLT folder)`: a 3-layer Llama with a word-level tokenizer and a random CLT."""
    root = tmp_path_factory.mktemp("clt_features")
    save_tiny_llama_and_corpus(root, num_words=60, hidden_size=WIDTH, intermediate_size=20, num_layers=LAYERS,
                               heads=2, kv_heads=1, documents={"train": 40}, words_per_document=(20, 40))  # fmt: skip
    random_clt(width=WIDTH).save_pretrained(root / "clt")
    return root / "lm", root / "text", root / "clt"


def features_command(lm, text, clt, *extra: str) -> list[str]:
    return [
        "features",
        "--sae",
        str(clt),
        "--model_name_or_path",
        str(lm),
        "--dataset_name",
        str(text),
        "--context_size",
        "32",
        "--max_tokens",
        "600",
        "--lm_dtype",
        "float32",
        "--held_out",
        "false",
        *extra,
    ]  # fmt: skip (the tiny text holds no held-out document)


def test_a_hookpoint_for_a_clt_is_refused_before_the_lm_loads(tiny, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr(clt_feature_runs, "load_lm", lambda *args, **kwargs: loads.append(args))
    assert main(features_command(*tiny, "--hookpoint", "model.layers.1.mlp.input")) != 0
    error = capsys.readouterr().err
    assert (
        f"--hookpoint was given with --sae {tiny[2]}, a cross-layer transcoder" in error
        and "Drop --hookpoint" in error
    )
    assert loads == [] and not (tiny[2] / FEATURES).exists()
    with pytest.raises(ArgumentError, match="--hookpoint was given"):
        main([*features_command(*tiny, "--hookpoint", "model.layers.1.mlp.input"), "--debug"])


def test_cli_features_load_back_and_label_the_graph_nodes(tiny, tmp_path, capsys):
    lm, text, clt_folder = tiny
    assert main(features_command(lm, text, clt_folder, "--explain", "some text")) == 1
    assert "--explain" in capsys.readouterr().err and not (clt_folder / FEATURES).exists()  # refused, naming it
    assert main(features_command(lm, text, clt_folder)) == 0, capsys.readouterr().err
    assert f"in each of {LAYERS} layers over 600 tokens" in capsys.readouterr().out
    assert sorted(p.name for p in (clt_folder / FEATURES).iterdir()) == ["layer_0", "layer_1", "layer_2"]
    clt = CltModel.from_pretrained(clt_folder)
    assert sorted(clt.features) == [0, 1, 2]
    assert all(clt.features[layer].metadata["tokens"] == 600 for layer in range(LAYERS))
    labels = {layer: clt.features[layer].stats["auto_label"].tolist() for layer in range(LAYERS)}
    assert all(any(row) for row in labels.values())  # features fired on every layer, and got labels

    # A label a person sets survives the next run; the automatic ones are the graph's other labels.
    (clt_folder / FEATURES / "layer_1" / LABELS).write_text(json.dumps({"4": "a person's label"}))
    assert main(features_command(lm, text, clt_folder, "--overwrite", "true")) == 0, capsys.readouterr().err
    clt = CltModel.from_pretrained(clt_folder)
    assert clt.features[1].labels == {4: "a person's label"}

    model, tokenizer = load_model(str(lm))
    graph = attribute(model, tokenizer, clt, PROMPT, max_feature_nodes=40, node_threshold=0.9, edge_threshold=0.99)
    nodes = [n for n in graph_json(graph, "g")["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert nodes
    for node in nodes:
        layer, feature = int(node["layer"]), int(node["node_id"].split("_")[1])
        expected = "a person's label" if (layer, feature) == (1, 4) else clt.features[layer].label(feature)
        assert expected in (labels[layer][feature], "no clear pattern")  # the automatic one, where its score passes
        assert node["clerp"] == expected
    assert any(node["clerp"] for node in nodes)


def test_a_clt_without_features_says_so():
    clt = random_clt(width=WIDTH)
    with pytest.raises(FeatureMetadataError, match="not loaded from a folder"):
        clt.features  # noqa: B018


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with HubServer() as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
        yield server


def test_a_pushed_clt_carries_its_features_and_loads_them_from_the_hub(tiny, hub, tmp_path, capsys):
    lm, text, clt_folder = tiny
    if not (clt_folder / FEATURES).is_dir():
        assert main(features_command(lm, text, clt_folder)) == 0, capsys.readouterr().err
    push_clt_folder("alice/clt-features", clt_folder, token=ALICE)
    files = set(HfApi(token=ALICE).list_repo_files("alice/clt-features"))
    assert {f"features/layer_{layer}/stats.parquet" for layer in range(LAYERS)} <= files
    local = load_layer_features(clt_folder)
    loaded = load_transcoders("alice/clt-features", token=ALICE)
    assert isinstance(loaded, CltModel) and loaded.name_or_path == "alice/clt-features"
    assert sorted(loaded.features) == sorted(local) == [0, 1, 2]
    for layer, metadata in local.items():
        hub_features = loaded.features[layer]
        assert (tmp_path / "hf-home") in hub_features.path.parents  # downloaded from the Hub into its cache
        assert hub_features.labels == metadata.labels
        assert hub_features.stats["auto_label"].tolist() == metadata.stats["auto_label"].tolist()
        assert torch.equal(
            torch.tensor(hub_features.stats["count"].values), torch.tensor(metadata.stats["count"].values)
        )
