"""Attribution graphs seen (`graph_page`) and tested on the model (`graph_interventions`): the layout's numbers, the
escaping of what the graph says, the page in real headless Chromium, and feature nodes switched off or scaled
through `SaeHooks` against the same computation written out here."""

import os
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from test_attribution import IDS, lm, transcoders  # noqa: F401  (the tiny float64 Llama and its transcoders)
from test_browser import chrome, wait_for  # noqa: F401  (chrome: the headless Chromium fixture)
from test_features import tiny_tokenizer

from hf_sae import ArgumentError, SaeHooks
from hf_sae.attribution import attribute, graph_json
from hf_sae.graph_interventions import GraphInterventions, prompt_ids
from hf_sae.graph_page import graph_layout, graph_svg, importance, write_graph_page

EVIL_LABEL = "<script>window.pwned = 1</script><b>bold</b>"
EVIL_TOKEN = "<img src=x onerror=pwned=2>"


@pytest.fixture(scope="module")
def graph(lm, transcoders) -> dict:  # noqa: F811
    """The pruned graph's JSON, its most influential feature labelled with markup, one token made markup too."""
    data = graph_json(attribute(lm, tiny_tokenizer(), transcoders, IDS, max_feature_nodes=None), "tiny")
    top_feature(data)["clerp"] = EVIL_LABEL
    data["metadata"]["prompt_tokens"][2] = EVIL_TOKEN
    return data


def top_feature(graph: dict) -> dict:
    """The feature node with the most influence: the smallest cumulative share."""
    features = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    return min(features, key=lambda n: n["influence"])


def expected_row(node: dict, n_layers: int) -> int:
    if node["feature_type"] in ("embedding", "logit"):
        return {"embedding": 0, "logit": n_layers + 1}[node["feature_type"]]
    return int(node["layer"]) + 1


# ---- the layout -----------------------------------------------------------------------------------------------------


def test_every_node_stands_once_at_its_token_column_and_layer_row(graph, lm):  # noqa: F811
    layout = graph_layout(graph)
    n_layers = lm.config.num_hidden_layers
    assert [p.index for p in layout.nodes] == list(range(len(graph["nodes"])))
    assert [p.node_id for p in layout.nodes] == [n["node_id"] for n in graph["nodes"]]
    assert {n["feature_type"] for n in graph["nodes"]} == {"cross layer transcoder", "mlp reconstruction error",
                                                           "embedding", "logit"}  # fmt: skip
    assert len(layout.columns) == len(IDS) and len(layout.rows) == n_layers + 2
    assert all(a > b for a, b in zip(layout.rows, layout.rows[1:]))  # row 0 (embeddings) lowest, logits on top
    for placed in layout.nodes:
        node = graph["nodes"][placed.index]
        assert (placed.column, placed.row) == (node["ctx_idx"], expected_row(node, n_layers))
        left, right = layout.columns[placed.column]
        assert left < placed.x - placed.radius and placed.x + placed.radius < right
        assert placed.y == layout.rows[placed.row]
    for a in layout.nodes:  # nothing overlaps
        assert all(abs(a.x - b.x) >= a.radius + b.radius or a.y != b.y for b in layout.nodes if b is not a)


def test_sizes_follow_influence_and_error_nodes_stand_apart(graph):
    layout = graph_layout(graph)
    nodes = graph["nodes"]
    ranked = [p for p in layout.nodes if p.kind != "logit"]
    ranked.sort(key=lambda p: nodes[p.index]["influence"])  # the cumulative share: most influential first
    radii = [p.radius for p in ranked]
    assert radii == sorted(radii, reverse=True) and radii[0] > radii[-1]
    logits = sorted((p for p in layout.nodes if p.kind == "logit"), key=lambda p: -nodes[p.index]["token_prob"])
    assert [p.radius for p in logits] == sorted((p.radius for p in logits), reverse=True)
    assert importance(top_feature(graph)) == 1 - top_feature(graph)["influence"]
    unlabelled = next(p for p in layout.nodes if p.kind == "feature" and not nodes[p.index]["clerp"])
    layer, feature, pos = unlabelled.node_id.split("_")  # the raw feature, not the JSON's paired index
    token = graph["metadata"]["prompt_tokens"][int(pos)]
    assert unlabelled.label == f"Feature {feature} of layer {layer} at {token!r}" and feature != str(
        nodes[unlabelled.index]["feature"]
    )
    svg = graph_svg(graph)
    errors = sum(n["feature_type"] == "mlp reconstruction error" for n in graph["nodes"])
    assert errors and len(re.findall(r'<rect class="node error"', svg)) == errors
    assert len(re.findall(r'<circle class="node feature"', svg)) == sum(
        n["feature_type"] == "cross layer transcoder" for n in graph["nodes"]
    )
    weights = [float(w) for w in re.findall(r'data-weight="([^"]+)"', svg)]
    assert len(weights) == len(graph["links"]) and {w > 0 for w in weights} == {True, False}
    widths = [float(w) for w in re.findall(r'stroke-width="([^"]+)"', svg)]
    assert widths == sorted(widths)  # drawn by |weight|, the strongest last (on top)
    assert re.findall(r'stroke="([^"]+)"', svg)[-1] == ("rgb(232,89,12)" if weights[-1] > 0 else "rgb(28,126,214)")


# ---- the page: self-contained, escaped, atomic ----------------------------------------------------------------------


def test_page_is_self_contained_and_escapes_what_the_graph_says(graph, tmp_path):
    path = write_graph_page(graph, tmp_path / "graph.html", contexts={"x": ["unused"]})
    page = path.read_text()
    assert not re.findall(r"""(?:src|href)=["'](?!data:)[a-z]+:""", page)  # no network, no CDN
    assert re.findall(r"https?://", page) == ["http://"]  # only the SVG namespace name
    assert "<script>window.pwned" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page and "&lt;img src=x onerror=pwned=2&gt;" in page
    assert page.count("<script>") == 1  # the page's own script, and nothing from the graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.html"]  # no temporary file left
    graph_two = {**graph, "metadata": {**graph["metadata"], "slug": "second"}}
    write_graph_page(graph_two, path)  # replaced in place
    assert "<title>second: attribution graph</title>" in path.read_text()
    with pytest.raises(ArgumentError, match="is a folder"):
        write_graph_page(graph, tmp_path)
    with pytest.raises(ArgumentError, match=r"`node_id` and a whole `ctx_idx`"):
        write_graph_page({**graph, "nodes": [{"node_id": "1_2_3", "ctx_idx": "3"}]}, tmp_path / "bad.html")
    with pytest.raises(ArgumentError, match=r"Expected an attribution graph's JSON.*\['metadata'\]"):
        write_graph_page({"metadata": {}}, tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists()


# ---- the page in headless Chromium ----------------------------------------------------------------------------------


def _tip(chrome) -> str:  # noqa: F811
    tips = chrome.find_elements("css selector", ".hf-graph-tip")
    return tips[0].text if tips and tips[0].is_displayed() else ""


def test_graph_page_in_headless_chromium(chrome, graph, tmp_path):  # noqa: F811
    from selenium.webdriver import ActionChains

    top = top_feature(graph)
    layer, feature, _ = top["node_id"].split("_")  # the JSON's `feature` is circuit-tracer's paired index
    contexts = {f"{layer}_{feature}": ["the cat <sat> on", "a dog ran"]}
    chrome.get(write_graph_page(graph, tmp_path / "graph.html", contexts=contexts).as_uri())
    wait_for(lambda: chrome.find_elements("css selector", ".hf-graph .node"))
    nodes = chrome.find_elements("css selector", ".hf-graph .node")
    assert len(nodes) == len(graph["nodes"])
    assert sorted(n.get_attribute("data-id") for n in nodes) == sorted(n["node_id"] for n in graph["nodes"])
    tokens = [t.text for t in chrome.find_elements("css selector", ".hf-graph text.token")]
    assert tokens[2] == EVIL_TOKEN and len(tokens) == len(IDS)

    node = chrome.find_element("css selector", f'.hf-graph .node[data-id="{top["node_id"]}"]')
    assert _tip(chrome) == ""
    ActionChains(chrome).move_to_element(node).perform()
    wait_for(lambda: _tip(chrome))
    lines = _tip(chrome).splitlines()
    assert lines[0] == EVIL_LABEL and lines[2:] == ["the cat <sat> on", "a dog ran"]  # markup shown as text
    assert f"activation {top['activation']:.3g}" in lines[1]
    assert chrome.execute_script("return window.pwned") is None  # nothing the graph held ran

    node.click()
    incoming = {e.get_attribute("data-source") for e in chrome.find_elements("css selector", ".link.incoming")}
    outgoing = {e.get_attribute("data-target") for e in chrome.find_elements("css selector", ".link.outgoing")}
    assert incoming == {link["source"] for link in graph["links"] if link["target"] == top["node_id"]}
    assert outgoing == {link["target"] for link in graph["links"] if link["source"] == top["node_id"]} != set()
    assert "focused" in chrome.find_element("css selector", ".hf-graph").get_attribute("class")
    shot = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "graph_page.png"
    chrome.set_window_size(1400, 900)
    assert chrome.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    node.click()  # a second click clears the highlight
    assert not chrome.find_elements("css selector", ".link.incoming, .link.outgoing, .node.chosen")
    assert "focused" not in chrome.find_element("css selector", ".hf-graph").get_attribute("class")
    assert [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"] == []


# ---- feature nodes switched off and scaled on the real model --------------------------------------------------------


def hooked_logits(lm, transcoders, edits: list[tuple[int, int, int, float]]) -> torch.Tensor:  # noqa: F811
    """The last position's logits with every transcoder spliced (error kept) and the features clamped: written out
    with `SaeHooks` directly."""
    hooks = SaeHooks(lm, {f"layer{layer}": sae for layer, sae in transcoders.items()}, all_tokens=True)
    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(hooks.splice(error_term=True))
        for layer, pos, feature, value in edits:
            clamp = hooks.steer({feature: value}, mode="clamp", hookpoint=f"layer{layer}", positions=[pos])
            stack.enter_context(clamp)
        return lm(IDS[None]).logits[0, -1]


def test_switching_a_node_off_and_scaling_it_move_the_logits_as_sae_hooks_does(lm, transcoders, graph):  # noqa: F811
    interventions = GraphInterventions(lm, tiny_tokenizer(), transcoders)
    assert prompt_ids(graph) == IDS.tolist()
    top = top_feature(graph)
    layer, feature, pos = (int(part) for part in top["node_id"].split("_"))
    with torch.no_grad():
        real = lm(IDS[None]).logits[0, -1]
    assert torch.allclose(interventions.last_logits(IDS.tolist()).double(), real, atol=1e-6)  # the error kept
    for spec, value in ((top["node_id"], 0.0), (f"{top['node_id']}:2.5", 2.5 * top["activation"])):
        rows = interventions.top_logits(graph, spec, top=99)
        expected = hooked_logits(lm, transcoders, [(layer, pos, feature, value)])
        got = torch.tensor([r.logit for r in sorted(rows, key=lambda r: r.token_id)], dtype=expected.dtype)
        assert torch.allclose(got, expected, atol=1e-5) and (expected - real).abs().max() > 1e-3  # it moved
        assert [r.token_id for r in rows] == expected.argsort(descending=True).tolist()
    ids = {n["node_id"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"}
    error_node = next(n["node_id"] for n in graph["nodes"] if n["feature_type"] == "mlp reconstruction error"
                      and n["node_id"] not in ids)  # fmt: skip
    with pytest.raises(ArgumentError, match=rf"'{error_node}' is not a feature node"):
        interventions.parse(graph, error_node)
    with pytest.raises(ArgumentError, match=r"'9_9_9' is no node"):
        interventions.parse(graph, "9_9_9")
    with pytest.raises(ArgumentError, match=r"Expected a number after `.*`; got 'x'"):
        interventions.parse(graph, f"{top['node_id']}:x")
    with pytest.raises(ArgumentError, match=r"from -1000 to 1000; got nan"):
        interventions.parse(graph, f"{top['node_id']}:nan")
    with pytest.raises(ArgumentError, match="at least one feature node"):
        interventions.parse(graph, " , ")
    with pytest.raises(ArgumentError, match="Expected a transcoder per layer, .* or a CltModel; got dict"):
        GraphInterventions(lm, None, {0: object()})
    with pytest.raises(ArgumentError, match="token id 99, beyond this LM's vocabulary of 99: it was traced"):
        interventions.last_logits([1, 99])
    no_embeddings = {**graph, "nodes": [n for n in graph["nodes"] if n["feature_type"] != "embedding"]}
    with pytest.raises(ArgumentError, match=r"embedding node `E_\{token\}_\{pos\}` at every position"):
        prompt_ids(no_embeddings)


def test_a_cross_layer_transcoders_edits_equal_per_layer_transcoders_where_it_writes_one_layer(lm):  # noqa: F811
    """A CLT whose latents write only into their own layer is a set of per-layer transcoders: its edits (MLP hooks)
    give the logits that the per-layer set's edits (`SaeHooks`) give. With its cross-layer decoders back, an edit
    moves the logits by more, and no edit leaves the real logits (every error kept)."""
    from test_attribution import make_clt, mlp_sites

    from hf_sae import SaeConfig, SaeModel

    clt = make_clt(lm)
    with torch.no_grad():
        real = lm(IDS[None]).logits[0, -1]
    graph = graph_json(attribute(lm, None, clt, IDS, max_feature_nodes=None), "clt")
    spec = top_feature(graph)["node_id"]
    full = GraphInterventions(lm, None, clt)
    assert torch.allclose(full.last_logits(IDS.tolist()).double(), real, atol=1e-6)
    edited_full = full.last_logits(IDS.tolist(), full.parse(graph, spec)).double()
    with torch.no_grad():
        for decoder in clt.W_dec:
            decoder[:, 1:] = 0  # each layer's latents into its own MLP only
    per_layer = {}
    for layer in range(clt.config.n_layers):
        source, target = mlp_sites(layer)
        config = SaeConfig(d_in=clt.config.d_in, num_latents=clt.config.num_latents, architecture="jumprelu",
                           hookpoint=source, output_hookpoint=target, apply_b_dec_to_input=False)  # fmt: skip
        tensors = {"W_enc": clt.W_enc[layer], "b_enc": clt.b_enc[layer], "threshold": clt.threshold[layer],
                   "W_dec": clt.W_dec[layer][:, 0], "b_dec": clt.b_dec[layer]}  # fmt: skip
        sae = SaeModel(config).to(lm.dtype).eval()
        sae.load_state_dict({k: v.detach().clone() for k, v in tensors.items()}, strict=False)
        per_layer[layer] = sae
    one_layer = GraphInterventions(lm, None, clt)
    by_hooks = GraphInterventions(lm, None, per_layer)
    for scale in ("", ":2.5"):
        edits = one_layer.parse(graph, spec + scale)
        got, expected = one_layer.last_logits(IDS.tolist(), edits), by_hooks.last_logits(IDS.tolist(), edits)
        assert (expected.double() - real).abs().max() > 1e-3  # the edit moved them
        assert torch.allclose(got, expected, atol=1e-6)  # float32 logits
    assert (edited_full - got.double()).abs().max() > 1e-6  # the cross-layer decoders carry the edit further
