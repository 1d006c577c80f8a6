"""`hf-sae attribute` end to end on a tiny random Llama saved to a folder, with random transcoders saved by hf_sae:
the graph JSON it writes against the Python API's graph on the same input, and every bad input refused before the LM
loads."""

import json

import pytest
import torch
from conftest import save_tiny_llama_and_corpus
from test_load_transcoders import random_clt, random_transcoder

import hf_sae.circuit_runners
from hf_sae import attribute, load_model, load_transcoders, read_graph_json
from hf_sae.attribution import graph_json, graph_scores
from hf_sae.cli import main
from hf_sae.feature_store import LABELS, METADATA
from hf_sae.hub import save_saes
from hf_sae.layout import FEATURES

LAYERS, WIDTH = 3, 12
PROMPT = "w3 w17 w42 w8 w5"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`(lm folder, transcoders folder)`: a 3-layer Llama with a word-level tokenizer, and a JumpReLU skip
    transcoder per layer whose features fire on its activations; layer 0's features have labels."""
    root = tmp_path_factory.mktemp("attribute")
    save_tiny_llama_and_corpus(root, num_words=60, hidden_size=WIDTH, intermediate_size=20, num_layers=LAYERS,
                               heads=2, kv_heads=1, documents={"train": 2}, words_per_document=(5, 6))  # fmt: skip
    saes = {layer: random_transcoder(layer, "jumprelu", width=WIDTH, skip=True) for layer in range(LAYERS)}
    save_saes({sae.config.hookpoint: sae for sae in saes.values()}, root / "transcoders")
    features = root / "transcoders" / saes[0].config.hookpoint / FEATURES  # labels people set, as `features/` has them
    features.mkdir()
    (features / METADATA).write_text(json.dumps({"hookpoint": saes[0].config.hookpoint}))
    (features / LABELS).write_text(json.dumps({str(i): f"label {i}" for i in range(saes[0].config.num_latents)}))
    return root / "lm", root / "transcoders"


def run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["attribute", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_cli_writes_the_graph_the_python_api_computes(tiny, tmp_path, capsys):
    lm, transcoders = tiny
    flags = ["--max_feature_nodes", "40", "--node_threshold", "0.9", "--edge_threshold", "0.99", "--top_logits", "3"]
    rc, out, err = run(["--model", str(lm), "--transcoders", str(transcoders), "--prompt", PROMPT, "--output_dir",
                        str(tmp_path / "graphs"), "--batch_size", "8", *flags], capsys)  # fmt: skip
    assert rc == 0, err
    written = read_graph_json(tmp_path / "graphs" / "w3-w17-w42-w8-w5.json")
    index = read_graph_json_index(tmp_path / "graphs")
    assert [g["slug"] for g in index] == ["w3-w17-w42-w8-w5"]

    model, tokenizer = load_model(str(lm))
    graph = attribute(model, tokenizer, load_transcoders(transcoders), PROMPT, max_feature_nodes=40,
                      node_threshold=0.9, edge_threshold=0.99, top_logits=3, batch_size=8)  # fmt: skip
    expected = graph_json(graph, "w3-w17-w42-w8-w5")
    assert graph.n_features > 10 and len(expected["links"]) > 10  # features fired, so there is a graph to compare
    assert [n["node_id"] for n in written["nodes"]] == [n["node_id"] for n in expected["nodes"]]
    assert {n["feature_type"] for n in written["nodes"]} >= {"cross layer transcoder", "embedding", "logit"}
    features = [n for n in written["nodes"] if n["feature_type"] == "cross layer transcoder"]
    labelled = [n for n in features if n["layer"] == "0"]
    assert labelled and all(n["clerp"] == f"label {n['node_id'].split('_')[1]}" for n in labelled)
    assert [(link["source"], link["target"]) for link in written["links"]] == [
        (link["source"], link["target"]) for link in expected["links"]
    ]
    torch.testing.assert_close(torch.tensor([link["weight"] for link in written["links"]]),
                               torch.tensor([link["weight"] for link in expected["links"]]))  # fmt: skip
    assert written["metadata"]["prompt_tokens"] == expected["metadata"]["prompt_tokens"] == PROMPT.split()
    assert written["metadata"]["node_threshold"] == 0.9
    replacement, completeness = graph_scores(graph)
    assert 0 < replacement < 1 and 0 < completeness < 1
    assert f"Replacement score {replacement:.3f}, completeness score {completeness:.3f}" in out
    assert f"{len(written['nodes']):,} nodes and {len(written['links']):,} links" in out
    page = (tmp_path / "graphs" / "w3-w17-w42-w8-w5.html").read_text()
    assert f"Graph page written to {tmp_path / 'graphs' / 'w3-w17-w42-w8-w5.html'}" in out
    assert page.startswith("<!") and all(node["node_id"] in page for node in written["nodes"])


def read_graph_json_index(folder) -> list[dict]:
    return json.loads((folder / "graph-metadata.json").read_text())["graphs"]


def test_a_cross_layer_transcoder_traces_through_the_cli_too(tiny, tmp_path, capsys):
    lm, _ = tiny
    random_clt(LAYERS, width=WIDTH).save_pretrained(tmp_path / "clt")
    rc, out, err = run(["--model", str(lm), "--transcoders", str(tmp_path / "clt"), "--prompt", PROMPT,
                        "--output_dir", str(tmp_path / "graphs"), "--slug", "clt", "--batch_size", "16"],
                       capsys)  # fmt: skip
    assert rc == 0, err
    nodes = read_graph_json(tmp_path / "graphs" / "clt.json")["nodes"]
    assert any(node["feature_type"] == "cross layer transcoder" for node in nodes)


@pytest.fixture
def lm_loads(monkeypatch) -> list:
    """Every LM load `hf-sae attribute` attempts, recorded and stopped."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("the LM was loaded")

    monkeypatch.setattr(hf_sae.circuit_runners, "load_model", refuse)
    return calls


def test_each_bad_input_is_refused_before_the_lm_loads(tiny, tmp_path, capsys, lm_loads):
    lm, transcoders = tiny
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "weights.bin").write_bytes(b"\0" * 8)
    two_layers = {layer: random_transcoder(layer, width=WIDTH) for layer in range(2)}
    save_saes({sae.config.hookpoint: sae for sae in two_layers.values()}, tmp_path / "two")
    wide = {layer: random_transcoder(layer, width=WIDTH + 4) for layer in range(LAYERS)}
    save_saes({sae.config.hookpoint: sae for sae in wide.values()}, tmp_path / "wide")
    good = ["--model", str(lm), "--transcoders", str(transcoders), "--prompt", PROMPT]
    cases = {
        "--prompt must be a text with at least one word; got '  '": ["--prompt", "  "],
        "--node_threshold must be a share in [0, 1]": ["--node_threshold", "1.5"],
        "--edge_threshold must be a share in [0, 1] (e.g. 0.8 keeps 80% of the influence); got -0.1": [
            "--edge_threshold", "-0.1"
        ],
        "--batch_size must be a positive integer; got 0": ["--batch_size", "0"],
        "does not exist locally": ["--transcoders", str(tmp_path / "nowhere")],
        "Found no SAE in": ["--transcoders", str(tmp_path / "unknown")],
        "The transcoders cover layers [0, 1], but": ["--transcoders", str(tmp_path / "two")],
        "The transcoders read width [16], but": ["--transcoders", str(tmp_path / "wide")],
    }  # fmt: skip
    for message, change in cases.items():
        rc, _, err = run(good + change, capsys)  # argparse keeps the last value of a flag given twice
        assert rc == 1 and message in err, (message, err)
    assert lm_loads == []
    with pytest.raises(RuntimeError, match="the LM was loaded"):  # good input reaches the LM: the probe works
        run(good, capsys)
    assert lm_loads == [(str(lm),)]


@pytest.mark.slow
def test_the_default_model_is_the_built_in_smollm2(tmp_path, capsys):
    from test_attribution_smollm2 import prompt, random_transcoders

    model, tokenizer = load_model()
    transcoders = random_transcoders(model, prompt(tokenizer, 8))
    save_saes({sae.config.hookpoint: sae for sae in transcoders.values()}, tmp_path / "transcoders")
    text = "The capital of France is"
    flags = ["--max_feature_nodes", "200", "--batch_size", "32"]  # no --model: the built-in one
    rc, out, err = run(["--transcoders", str(tmp_path / "transcoders"), "--prompt", text, "--output_dir",
                        str(tmp_path / "graphs"), *flags], capsys)  # fmt: skip
    assert rc == 0, err
    written = read_graph_json(tmp_path / "graphs" / "the-capital-of-france-is.json")
    graph = attribute(model, tokenizer, transcoders, text, max_feature_nodes=200, batch_size=32)
    expected = graph_json(graph, "the-capital-of-france-is")
    assert written["metadata"]["prompt_tokens"] == [tokenizer.decode([i]) for i in tokenizer(text).input_ids]
    assert [n["node_id"] for n in written["nodes"]] == [n["node_id"] for n in expected["nodes"]]
    assert len(expected["nodes"]) > 20 and any(
        n["feature_type"] == "cross layer transcoder" for n in expected["nodes"]
    )
    assert "Replacement score {:.3f}, completeness score {:.3f}".format(*graph_scores(graph)) in out
