"""hf_sae's attribution graphs against the ones circuit-tracer 0.5.0's own `attribute()` computed (nnsight backend,
float32) for the same tiny random Llama, transcoders and prompt (tests/fixtures/circuit_tracer/attribution_llama,
written by `make_fixtures.py attribute` in a throwaway venv; CI needs no circuit-tracer).

Two replacements: a JumpReLU skip transcoder set and a JumpReLU cross-layer transcoder, random but scaled to the
model's MLP outputs, so that about half the features fire and the error nodes hold a share of every target's input
(completeness 0.87). Two runs of each: every active feature a node, and `max_feature_nodes=40` of ~200, where the
nodes are chosen by partial influence re-ranked every 4 batches of 8.

What must agree: the active features, their values and the selected ones (exactly: same indices), the logit targets
and their probabilities, the adjacency, the replacement and completeness scores, and the pruning masks.
Tolerance of the adjacency: |hf_sae - circuit-tracer| <= 2e-6 x the largest edge. Measured, on this CPU in float32:
1.5e-5 on edges up to 47.8 (3.2e-7 of the largest) for the transcoder set, 3.8e-6 of 15.7 (2.4e-7) for the CLT;
float32 rounding of the same sums taken in another order. Pruned from circuit-tracer's own adjacency, hf_sae's
`prune` and `graph_scores` reproduce circuit-tracer's masks and scores bit for bit. The same held on the real
SmolLM2-135M (8 tokens, the random transcoders of test_attribution_smollm2.py exported with `to_circuit_tracer`): the
same 410 features and 10 logits, edges within 1.2e-5 of edges up to 19.0 (6.5e-7), no sign flipped among the 85,206
edges above 1e-3.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_sae import CltModel, load_transcoders
from hf_sae.attribution import attribute, graph_scores, prune

FIXTURE = Path(__file__).parent / "fixtures" / "circuit_tracer" / "attribution_llama"
NAMES = ("set_jumprelu_skip", "clt_jumprelu")
RUNS = {"graph": {}, "graph_top": {"max_feature_nodes": 40, "batch_size": 8}}  # as make_fixtures.py ran them
EDGE_TOLERANCE = 2e-6  # of the largest edge (measured 3.2e-7)


def reference(name: str, run: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / f"{name}_{run}.safetensors")


@pytest.fixture(scope="module")
def lm():
    model = AutoModelForCausalLM.from_pretrained(FIXTURE / "model", attn_implementation="eager", dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(FIXTURE / "model")


@pytest.fixture(scope="module")
def graphs(lm):
    """hf_sae's graph for every (replacement, run) of the fixture, and circuit-tracer's tensors for it."""
    model, tokenizer = lm
    out = {}
    for name in NAMES:
        transcoders = load_transcoders(FIXTURE / name)  # circuit-tracer's folder, read as circuit-tracer reads it
        assert isinstance(transcoders, CltModel) == name.startswith("clt")
        for run, options in RUNS.items():
            expected = reference(name, run)
            out[name, run] = attribute(model, tokenizer, transcoders, expected["input_tokens"], **options), expected
    return out


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", NAMES)
def test_the_nodes_are_circuit_tracers(graphs, name, run):
    graph, expected = graphs[name, run]
    assert torch.equal(graph.active_features, expected["active_features"])
    assert 150 < len(graph.active_features) < 250  # about half of 3 layers x 6 positions x 24 latents
    torch.testing.assert_close(graph.activations, expected["activation_values"], rtol=1e-5, atol=1e-5)
    assert torch.equal(graph.selected, expected["selected_features"])
    if run == "graph_top":  # the re-ranking chose 40 of ~200, and chose what circuit-tracer chose
        assert graph.n_features == 40 < len(graph.active_features)
    assert torch.equal(graph.logit_ids, expected["logit_targets"]) and graph.n_logits == 10
    assert graph.logit_tokens[0] == f"w{int(expected['logit_targets'][0])}"
    torch.testing.assert_close(graph.logit_probabilities, expected["logit_probabilities"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", NAMES)
def test_the_adjacency_is_circuit_tracers_within_float32_rounding(graphs, name, run):
    graph, expected = graphs[name, run]
    theirs = expected["adjacency_matrix"]
    assert graph.adjacency.shape == theirs.shape == (graph.logit_start + 10,) * 2
    largest = float(theirs.abs().max())
    errors = theirs[:, graph.error_start : graph.token_start].abs().max()
    features = theirs[:, : graph.error_start].abs().max()
    assert errors > 0.2 * features > 0  # error nodes carry edges as large as the features' own
    difference = float((graph.adjacency - theirs).abs().max())
    assert difference <= EDGE_TOLERANCE * largest, f"{difference} against edges up to {largest}"


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", NAMES)
def test_scores_and_pruning_are_circuit_tracers(graphs, name, run):
    graph, expected = graphs[name, run]
    replacement, completeness = expected["scores"].tolist()
    assert 0.4 < replacement < 0.8 and 0.7 < completeness < 0.95  # errors matter: neither score is 1
    assert graph_scores(graph) == pytest.approx((replacement, completeness), abs=1e-6)
    pruned = prune(graph)
    assert torch.equal(pruned.node_mask, expected["node_mask"])
    assert torch.equal(pruned.edge_mask, expected["edge_mask"])
    assert 0 < int(pruned.node_mask.sum()) < len(pruned.node_mask)
    # On circuit-tracer's own edges: the same numbers up to the summation order of this CPU's matrix kernels (bit for
    # bit where they sum as the fixture's host did; AVX-512 kernels differ in the last place).
    theirs = replace(graph, adjacency=expected["adjacency_matrix"])
    assert graph_scores(theirs) == pytest.approx((replacement, completeness), rel=1e-6)
    again = prune(theirs)
    assert torch.equal(again.edge_mask, expected["edge_mask"])
    torch.testing.assert_close(again.cumulative_scores, expected["cumulative_scores"], rtol=1e-6, atol=1e-7)
