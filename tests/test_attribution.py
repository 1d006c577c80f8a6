"""Attribution graphs (`hf_sae.attribution`, after Ameisen et al. 2025 and circuit-tracer) on a tiny random Llama
with small random transcoders, checked against what a graph claims:

(a) with its error nodes, the local replacement model reproduces the real model's logits;
(b) completeness: each target's incoming edges plus its constant terms (biases, the BOS position's MLP outputs)
    add up to its value (a feature's pre-activation, a logit less the vocabulary's mean logit);
(c) switching features off through `SaeHooks` moves the logits and the later features by what their edges say;
(d) bad input is refused before any forward runs.

The models run in float64, so that the algebra is checked, not float32 rounding; one test states what float32 gives.
The transcoders are random, scaled so that their predictions are as large as the real MLP outputs: the error nodes
are then as large as the features, and a graph that dropped either would fail (b).
"""

import json
from contextlib import ExitStack

import pytest
import torch
from conftest import make_tiny_lm
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from hf_sae import (
    ArgumentError,
    CltConfig,
    CltModel,
    FeatureMetadata,
    FileFormatError,
    HookpointError,
    SaeConfig,
    SaeHooks,
    SaeModel,
)
from hf_sae.attribution import (
    ReplacementModel,
    attribute,
    graph_scores,
    node_influence,
    prune,
    read_graph_json,
    write_graph_json,
)
from hf_sae.hookpoints import capture_activations

IDS = torch.tensor([1, 5, 17, 42, 8, 33])  # BOS first
LAYERS, WIDTH, LATENTS = 3, 24, 16
ARCHITECTURES = ("jumprelu", "topk", "relu")  # one per layer, so each encoder path shows
_DIMS = {
    "vocab_size": 99, "hidden_size": WIDTH, "intermediate_size": 36, "num_hidden_layers": LAYERS,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "bos_token_id": 1,
    "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.2,  # MLP outputs as large as the embeddings
}  # fmt: skip
NODE_TYPES = ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")  # circuit-tracer's names
_CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
# Tolerances, relative to the largest magnitude of what is compared. TOL64: the algebra in float64, where the
# replacement is exactly affine (measured about 1e-15). TOL_REAL: against the real model, whose RMSNorm rounds to
# float32 even in a float64 Llama, and for float32 models (measured about 1e-7 and 1e-6).
TOL64, TOL_REAL = 1e-9, 1e-5


def tiny_lm(family: str = "llama", dtype=torch.float64):
    extra = {"head_dim": WIDTH // 4} if family == "qwen3" else {}
    torch.manual_seed(0)
    config = _CONFIGS[family](**_DIMS, **extra)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval().to(dtype)


def mlp_sites(layer: int) -> tuple[str, str]:
    return f"model.layers.{layer}.mlp.input", f"model.layers.{layer}.mlp"


def real_mlp_activations(lm) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sites = [site for layer in range(LAYERS) for site in mlp_sites(layer)]
    with torch.no_grad():
        acts = capture_activations(lm, sites, IDS[None])
    return [(acts[mlp_sites(layer)[0]][0], acts[mlp_sites(layer)[1]][0]) for layer in range(LAYERS)]


def _randomize(module, scale: float = 0.4) -> None:
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * scale)
            if name.startswith("b_enc"):
                tensor.sub_(0.8)  # about a third of the latents fire
            if name.startswith("threshold"):
                tensor.copy_(torch.rand_like(tensor) * 0.5)


def make_transcoders(lm, skip: bool = True, seed: int = 0) -> dict[int, SaeModel]:
    """A random transcoder per layer (jumprelu, topk, relu), its outputs scaled to the real MLP outputs' size."""
    torch.manual_seed(seed)
    saes = {}
    for layer, (x, y) in enumerate(real_mlp_activations(lm)):
        source, target = mlp_sites(layer)
        k = {"k": 4} if ARCHITECTURES[layer] == "topk" else {}
        config = SaeConfig(d_in=WIDTH, num_latents=LATENTS, architecture=ARCHITECTURES[layer], hookpoint=source,
                           output_hookpoint=target, skip_connection=skip, apply_b_dec_to_input=False, **k)  # fmt: skip
        sae = SaeModel(config).to(lm.dtype).eval()
        _randomize(sae)
        with torch.no_grad():
            scale = y.norm() / sae(x).reconstruction.norm()
            for name in ("W_dec", "b_dec") + (("W_skip",) if skip else ()):
                getattr(sae, name).mul_(scale)
        saes[layer] = sae
    return saes


def make_clt(lm, seed: int = 0) -> CltModel:
    torch.manual_seed(seed)
    clt = CltModel(CltConfig(n_layers=LAYERS, d_in=WIDTH, num_latents=LATENTS, architecture="jumprelu"))
    clt = clt.to(lm.dtype).eval()
    _randomize(clt)
    x, y = (torch.stack(t, 1) for t in zip(*real_mlp_activations(lm)))  # (seq, L, d)
    with torch.no_grad():
        scale = y.norm() / clt(x).reconstruction.norm()
        clt.b_dec.mul_(scale)
        for decoder in clt.W_dec:
            decoder.mul_(scale)
    return clt


def demeaned(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(-1, keepdim=True)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.fixture(scope="module")
def transcoders(lm):
    return make_transcoders(lm)


@pytest.fixture(scope="module")
def graph(lm, transcoders):
    return attribute(lm, None, transcoders, IDS, max_feature_nodes=None)


# ---- (a) the replacement model reproduces the real logits -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["skip", "plain", "clt"])
def test_the_replacement_with_error_nodes_reproduces_the_real_logits(lm, kind):
    transcoders = make_clt(lm) if kind == "clt" else make_transcoders(lm, skip=kind == "skip")
    replacement = ReplacementModel(lm, transcoders, IDS)
    with torch.no_grad():
        real = lm(IDS[None]).logits[0]
    assert relative_error(replacement.logits(), real) < TOL_REAL  # measured about 1e-7 (float32 norms inside)
    # Not by accident: without the error nodes the logits move, and the features are active.
    without_errors = replacement.logits(terms=list(replacement.feature_out))
    assert relative_error(without_errors, real) > 0.05
    assert (replacement.activations != 0).sum() > 20 and not replacement.activations[:, 0].any()


# ---- (b) completeness -----------------------------------------------------------------------------------------------


def replacement_values(lm, replacement, terms=None, embeddings=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(pre_activations (L, seq, num_latents), demeaned last logits (vocab,))` of one frozen forward."""
    with torch.no_grad(), replacement.frozen(terms, embeddings) as capture:
        logits = demeaned(lm(replacement.input_ids[None]).logits[0, -1])
    return replacement.transcoders.encode(torch.stack([x[0] for x in capture.mlp_in]))[0], logits


def completeness_errors(lm, transcoders, graph) -> tuple[float, float]:
    """The largest relative error of `edges + constants = value` over the feature rows and over the logit rows.
    The values are the replacement's (the real model's up to its RMSNorm's float32 rounding, checked by (a)); the
    constants are what it gives with every source (embeddings, features, errors) at zero: the replacement is affine
    in its sources, so that is its constant term."""
    replacement = ReplacementModel(lm, transcoders, graph.input_ids)
    zeros = [torch.zeros_like(t) for t in replacement.errors]
    constant_pre, constant_logits = replacement_values(
        lm, replacement, zeros, torch.zeros_like(replacement.embeddings)
    )
    value_pre, value_logits = replacement_values(lm, replacement)
    layer, pos, feature = graph.feature_nodes().T
    sums = graph.adjacency.sum(1)
    features = sums[: graph.n_features] + constant_pre[layer, pos, feature]
    logits = sums[graph.logit_start :] + constant_logits[graph.logit_ids]
    expected_features, expected_logits = value_pre[layer, pos, feature], value_logits[graph.logit_ids]
    return relative_error(features, expected_features), relative_error(logits, expected_logits)


@pytest.mark.parametrize("kind", ["skip", "plain", "clt"])
def test_every_target_is_the_sum_of_its_edges_and_constants(lm, kind):
    transcoders = make_clt(lm) if kind == "clt" else make_transcoders(lm, skip=kind == "skip")
    graph = attribute(lm, None, transcoders, IDS, max_feature_nodes=None)
    assert graph.n_features > 20 and graph.n_logits == 10
    assert graph.feature_nodes()[:, 0].unique().tolist() == [0, 1, 2]  # every layer drives and is driven
    feature_error, logit_error = completeness_errors(lm, transcoders, graph)
    assert feature_error < TOL64 and logit_error < TOL64  # measured about 1e-15
    # Error nodes carry a real share of the edges, so a graph without them would fail.
    errors = graph.adjacency[:, graph.error_start : graph.token_start].abs().sum()
    assert errors > 0.1 * graph.adjacency[:, : graph.error_start].abs().sum()


@pytest.mark.parametrize(
    ("family", "dtype", "tolerance"),
    [("mistral", torch.float64, TOL64), ("qwen2", torch.float64, TOL64), ("qwen3", torch.float64, TOL64),
     ("llama", torch.float32, TOL_REAL)],  # float32: measured about 3e-7 for (a) and (b)
)  # fmt: skip
def test_other_families_and_float32_reproduce_and_complete(family, dtype, tolerance):
    lm = tiny_lm(family, dtype)
    transcoders = make_transcoders(lm)
    with torch.no_grad():
        real = lm(IDS[None]).logits[0]
    assert relative_error(ReplacementModel(lm, transcoders, IDS).logits(), real) < TOL_REAL
    graph = attribute(lm, None, transcoders, IDS, max_feature_nodes=None)
    assert max(completeness_errors(lm, transcoders, graph)) < tolerance


# ---- (c) switching features off moves what their edges say ----------------------------------------------------------


def test_ablating_features_through_sae_hooks_moves_logits_and_features_by_their_edges(lm, transcoders, graph):
    """Direct effects: the graph's edges hold everything but the source fixed. So does this check: attention
    patterns and norm denominators frozen at the real forward's (`replacement.frozen()`), every MLP output held at
    its transcoders' prediction plus its error node (the skip terms, linear, still follow their input, as in the
    graph), and `SaeHooks` splices each transcoder with its error kept and zeroes the chosen feature at its
    position. The demeaned logits and later features then move by minus the feature's edges to them, to TOL_REAL:
    `SaeHooks` encodes the feature again from the frozen forward's MLP input, which differs from the real forward's
    by the real RMSNorm's float32 rounding (measured about 3e-8)."""
    replacement = ReplacementModel(lm, transcoders, IDS)
    hooks = SaeHooks(lm, {f"layer{layer}": sae for layer, sae in transcoders.items()})
    base_pre, base_logits = replacement_values(lm, replacement)  # before the switch, in the same frozen forward
    nodes = graph.feature_nodes()
    on_logit = graph.adjacency[graph.logit_start, : graph.n_features].abs()
    on_features = graph.adjacency[: graph.n_features, : graph.n_features].abs().amax(0)
    strongest = list(dict.fromkeys(on_logit.argsort(descending=True)[:3].tolist() + [int(on_features.argmax())]))
    assert on_features.max() > 1e-2  # one of them drives later features, so that their check is not empty

    def switched_off(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        with ExitStack() as stack, torch.no_grad():
            stack.enter_context(hooks.splice(error_term=True))
            for i in indices:
                layer, pos, feature = nodes[i].tolist()
                stack.enter_context(hooks.ablate([feature], hookpoint=f"layer{layer}", positions=[pos]))
            capture = stack.enter_context(replacement.frozen())  # entered last, so its MLP hooks run first
            logits = demeaned(lm(IDS[None]).logits[0, -1])
        pre = replacement.transcoders.encode(torch.stack([x[0] for x in capture.mlp_in]))[0]
        return (logits - base_logits)[graph.logit_ids], (pre - base_pre)[tuple(nodes.T)]

    for i in strongest:
        moved, changed = switched_off([i])
        assert graph.adjacency[graph.logit_start :, i].abs().max() > 1e-3  # a real effect, not two zeros agreeing
        predicted = -graph.adjacency[graph.logit_start :, i]
        assert relative_error(moved, predicted) < TOL_REAL
        # The later features move by their edges from it too.
        assert relative_error(changed, -graph.adjacency[: graph.n_features, i]) < TOL_REAL
    # Together, the direct effects add up: features of one layer, which cannot change one another's activations
    # (SaeHooks zeroes what a feature has in the forward it runs in).
    layer = int(nodes[strongest[-1], 0])
    same_layer = (nodes[:, 0] == layer).nonzero()[:, 0]
    together = same_layer[on_logit[same_layer].argsort(descending=True)[:3]].tolist()
    moved, _ = switched_off(together)
    assert relative_error(moved, -graph.adjacency[graph.logit_start :, together].sum(1)) < TOL_REAL


def test_ablating_a_clt_feature_moves_the_logits_by_its_edges(lm):
    clt = make_clt(lm)
    graph = attribute(lm, None, clt, IDS, max_feature_nodes=None)
    replacement = ReplacementModel(lm, clt, IDS)
    nodes = graph.feature_nodes()
    layer0 = (nodes[:, 0] == 0).nonzero()[:, 0]  # a layer-0 feature writes into every layer's MLP output
    i = int(layer0[graph.adjacency[graph.logit_start, layer0].abs().argmax()])
    logits = replacement.logits(terms=replacement.terms_without([tuple(nodes[i].tolist())]))[-1]
    moved = (demeaned(logits) - demeaned(replacement.logits()[-1]))[graph.logit_ids]
    assert relative_error(moved, -graph.adjacency[graph.logit_start :, i]) < TOL64  # the graph's own activations


# ---- the graph: batching, the feature cap, pruning, scores ----------------------------------------------------------


def test_rows_do_not_depend_on_the_batch_and_the_cap_keeps_rows_exact(lm, transcoders, graph):
    def feature_and_logit_rows(g, features, columns):
        """The rows of `features` (adjacency indices) and of the logits, over the source `columns`."""
        return g.adjacency[features][:, columns], g.adjacency[g.logit_start :][:, columns]

    small = attribute(lm, None, transcoders, IDS, max_feature_nodes=None, batch_size=3, top_logits=4)
    sources = torch.arange(graph.logit_start)
    got, expected = feature_and_logit_rows(small, sources, sources), feature_and_logit_rows(graph, sources, sources)
    assert torch.allclose(got[0], expected[0]) and torch.allclose(got[1], expected[1][:4])
    capped = attribute(lm, None, transcoders, IDS, max_feature_nodes=7, batch_size=2)
    assert capped.n_features == 7 and capped.adjacency.shape[0] == 7 + (LAYERS + 1) * len(IDS) + capped.n_logits
    columns = torch.cat([capped.selected, torch.arange(graph.n_features, graph.logit_start)])
    got = feature_and_logit_rows(capped, torch.arange(7), torch.arange(capped.logit_start))
    expected = feature_and_logit_rows(graph, capped.selected, columns)
    assert torch.allclose(got[0], expected[0]) and torch.allclose(got[1], expected[1])


def test_influence_is_the_closed_form_series_and_pruning_keeps_what_it_promises(graph):
    matrix = graph.adjacency.abs() / graph.adjacency.abs().sum(1, keepdim=True).clamp(min=1e-10)
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    closed_form = graph.logit_weights() @ (torch.linalg.inv(eye - matrix) - eye)
    assert torch.allclose(node_influence(graph), closed_form, atol=1e-12)
    node_mask, edge_mask, cumulative = prune(graph, 0.8, 0.98)
    assert node_mask[graph.token_start :].all()  # tokens and logits always stay
    kept_features = node_mask[: graph.n_features]
    assert 0 < kept_features.sum() < graph.n_features
    assert edge_mask[: graph.n_features][kept_features].any(1).all()  # each kept feature has an input
    assert edge_mask[:, : graph.n_features][:, kept_features].any(0).all()  # and an output
    assert not edge_mask[~node_mask].any() and not edge_mask[:, ~node_mask].any()
    crossing = cumulative[cumulative >= 0.8].min()  # the node that brings the kept share to 80%, the last kept
    assert (cumulative[: graph.token_start][node_mask[: graph.token_start]] <= crossing).all()
    everything, _, _ = prune(graph, 1.0, 1.0)
    assert everything[: graph.n_features].all()
    replacement_score, completeness_score = graph_scores(graph)
    assert 0 < replacement_score < 1 and 0 < completeness_score < 1


# ---- the graph JSON -------------------------------------------------------------------------------------------------


def test_the_graph_json_is_circuit_tracers_with_labels(tmp_path, lm):
    transcoders = make_transcoders(lm)
    replacement = ReplacementModel(lm, transcoders, IDS)
    feature = int(replacement.activations[1, 1:].sum(0).argmax())  # fires somewhere on layer 1
    transcoders[1].features = FeatureMetadata(labels={feature: "a label people set"})
    graph = attribute(lm, None, transcoders, IDS, max_feature_nodes=None, node_threshold=1.0, edge_threshold=1.0)
    data = read_graph_json(write_graph_json(graph, tmp_path, "tiny"))
    write_graph_json(graph, tmp_path, "tiny-again")
    meta = data["metadata"]
    assert meta["slug"] == "tiny" and meta["schema_version"] == 1 and meta["node_threshold"] == 1.0
    assert meta["prompt_tokens"] == [str(i) for i in IDS.tolist()] and set(data["qParams"]) >= {"pinnedIds"}
    by_type = {kind: [n for n in data["nodes"] if n["feature_type"] == kind] for kind in NODE_TYPES}
    assert [n["node_id"] for n in by_type["embedding"]] == [f"E_{t}_{p}" for p, t in enumerate(IDS.tolist())]
    logits = by_type["logit"]
    assert [n["node_id"] for n in logits] == [f"{LAYERS + 1}_{t}_{len(IDS) - 1}" for t in graph.logit_ids.tolist()]
    assert logits[0]["is_target_logit"] and logits[0]["clerp"].startswith(f'Output "{graph.logit_tokens[0]}" (p=')
    labelled = [n for n in by_type["cross layer transcoder"] if n["node_id"].startswith(f"1_{feature}_")]
    assert labelled and all(n["clerp"] == "a label people set" and n["activation"] > 0 for n in labelled)
    assert all(n["node_id"].startswith("0_") for n in by_type["mlp reconstruction error"])
    ids = {n["node_id"] for n in data["nodes"]}
    assert data["links"] and all(link["source"] in ids and link["target"] in ids for link in data["links"])
    listed = json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]
    assert [g["slug"] for g in listed] == ["tiny", "tiny-again"]


def test_a_graph_json_of_another_schema_version_is_refused_naming_it(tmp_path):
    data = {"metadata": {"slug": "g", "schema_version": 2}, "qParams": {}, "nodes": [], "links": []}
    (tmp_path / "g.json").write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match=r"schema_version 2; hf_sae reads schema_version 1"):
        read_graph_json(tmp_path / "g.json")
    (tmp_path / "h.json").write_text(json.dumps({"nodes": []}))
    with pytest.raises(FileFormatError, match=r"not an attribution graph"):
        read_graph_json(tmp_path / "h.json")


# ---- (d) bad input, refused before any forward ----------------------------------------------------------------------


def _retargeted(saes: dict, **changes) -> dict:
    """The transcoders with layer 1's config changed."""
    config = SaeConfig(**{**saes[1].config.to_dict(), **changes})
    return {**saes, 1: SaeModel(config).to(saes[1].dtype)}


_TINY_CLT = {"d_in": WIDTH, "num_latents": LATENTS, "architecture": "jumprelu"}
# case: (what `attribute` gets, as (model, transcoders, prompt, keywords) from the good ones; error; message)
_BAD_INPUT = {
    "missing layer": (lambda lm, t: (lm, {0: t[0], 2: t[2]}, IDS, {}), ArgumentError, r"missing layers \[1\]"),
    "unknown hookpoint": (lambda lm, t: (lm, _retargeted(t, hookpoint="model.layers.1.mlpp.input"), IDS, {}),
                          HookpointError, r"model\.layers\.1\.mlpp\.input.*closest"),
    "another layer's MLP": (lambda lm, t: (lm, _retargeted(t, hookpoint="model.layers.2.mlp.input"), IDS, {}),
                            HookpointError, r"layer 1 reads `model\.layers\.2\.mlp\.input`.*must read "),
    "an SAE": (lambda lm, t: (lm, _retargeted(t, output_hookpoint=None, skip_connection=False), IDS, {}),
               ArgumentError, r"layer 1 reconstructs .*attribution needs transcoders"),
    "width": (lambda lm, t: (lm, _retargeted(t, d_in=16, d_out=16), IDS, {}), ArgumentError,
              r"d_in=16 .*residual stream of width 24"),
    "CLT layers": (lambda lm, t: (lm, CltModel(CltConfig(n_layers=2, **_TINY_CLT)), IDS, {}), ArgumentError,
                   r"replaces 2 layers, but LlamaForCausalLM has 3"),
    "too long": (lambda lm, t: (lm, t, torch.randint(3, 99, (65,)), {}), ArgumentError,
                 r"65 tokens, more than the model's context of 64"),
    "token ids": (lambda lm, t: (lm, t, [1, 120], {}), ArgumentError, r"Token ids must lie in \[0, 99\)"),
    "text": (lambda lm, t: (lm, t, "The capital of", {}), ArgumentError, r"A text prompt needs the model's tokenizer"),
    "threshold": (lambda lm, t: (lm, t, IDS, {"node_threshold": 1.5}), ArgumentError,
                  r"`node_threshold` is a share, in \[0, 1\]; got 1.5"),
    "architecture": (lambda lm, t: (make_tiny_lm("gpt2").model, t, IDS, {}), ArgumentError,
                     r"does not support GPT2LMHeadModel \(model_type 'gpt2'\).*q_proj"),
}  # fmt: skip


@pytest.mark.parametrize("case", _BAD_INPUT)
def test_bad_input_is_refused_before_any_forward(lm, transcoders, case):
    arguments, error, message = _BAD_INPUT[case]
    model, saes, prompt, kwargs = arguments(lm, transcoders)
    forwards = []
    handle = model.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(error, match=message):
            attribute(model, None, saes, prompt, **kwargs)
    finally:
        handle.remove()
    assert not forwards
