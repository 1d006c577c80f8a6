"""An attribution graph as the JSON that circuit-tracer writes (`utils/create_graph_files.py`, `frontend/
graph_models.py`) and Neuronpedia's graph viewer reads (Ameisen et al. 2025, "Circuit Tracing"):

    {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version: 1},
     "qParams": {pinnedIds, supernodes, linkType, clickedId, sg_pos},
     "nodes": [{node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx,
                reverse_ctx_idx, jsNodeId, clerp, influence, activation}, ...],
     "links": [{source, target, weight}, ...]}

Node ids: `{layer}_{feature}_{pos}` features, `0_{layer}_{pos}` error nodes, `E_{token}_{pos}` embeddings,
`{n_layers + 1}_{token}_{pos}` logits. Only the pruned graph is written: the kept nodes that have a kept edge, and
every embedding and logit. `<folder>/graph-metadata.json` lists the graphs of a folder, one entry per slug.
"""

import json
from pathlib import Path

from ..errors import FileFormatError
from ..layout import folder_name, read_json, write_json
from .graph import AttributionGraph, prune

SCHEMA_VERSION = 1
GRAPH_METADATA = "graph-metadata.json"


def graph_json(graph: AttributionGraph, slug: str) -> dict:
    """The pruned graph as a JSON-ready dict, with `graph.node_threshold` and `graph.edge_threshold`."""
    node_mask, edge_mask, cumulative = prune(graph)
    nodes = {index: _node(graph, index, float(cumulative[index])) for index in node_mask.nonzero()[:, 0].tolist()}
    targets, sources = edge_mask.nonzero(as_tuple=True)
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(targets.tolist(), sources.tolist())
        if s in nodes and t in nodes
    ]
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    kept = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    metadata = {
        "slug": slug, "scan": graph.scan, "transcoder_list": [], "prompt_tokens": list(graph.tokens),
        "prompt": graph.prompt, "node_threshold": graph.node_threshold, "schema_version": SCHEMA_VERSION,
    }  # fmt: skip
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": kept, "links": links}


def write_graph_json(graph: AttributionGraph, folder: str | Path, slug: str) -> Path:
    """Write `<folder>/<slug>.json` and add (or replace) its entry in `<folder>/graph-metadata.json`; returns the
    graph file's path. Each file is written atomically."""
    slug = folder_name(slug, "The graph's slug", "Name it like a file: 'capital-of-france'.")
    folder = Path(folder)
    data = graph_json(graph, slug)
    path = folder / f"{slug}.json"
    write_json(path, data)
    index_path = folder / GRAPH_METADATA
    index = read_json(index_path) if index_path.is_file() else {"graphs": []}
    graphs = [g for g in index.get("graphs", []) if isinstance(g, dict) and g.get("slug") != slug]
    write_json(index_path, {**index, "graphs": [*graphs, data["metadata"]]})
    return path


def read_graph_json(path: str | Path) -> dict:
    """A graph JSON as written here or by circuit-tracer, checked: schema version 1, metadata, nodes and links."""
    data = read_json(Path(path))
    metadata = data.get("metadata")
    if (
        not isinstance(metadata, dict)
        or not isinstance(data.get("nodes"), list)
        or not isinstance(data.get("links"), list)
    ):
        raise FileFormatError(
            f"{path} is not an attribution graph: expected an object with `metadata`, `nodes` and `links`, as "
            f"circuit-tracer and `write_graph_json` write; got keys {sorted(data)}."
        )
    version = metadata.get("schema_version", SCHEMA_VERSION)  # circuit-tracer before 0.5 wrote none: the same schema
    if version != SCHEMA_VERSION:
        raise FileFormatError(
            f"{path} is a graph of schema_version {json.dumps(version)}; hf_sae reads schema_version "
            f"{SCHEMA_VERSION}, as circuit-tracer 0.5 writes it. Write the graph again with this version of hf_sae "
            "or of circuit-tracer."
        )
    ids = {node.get("node_id") for node in data["nodes"] if isinstance(node, dict)}
    links = [link if isinstance(link, dict) else {} for link in data["links"]]
    if dangling := [link for link in links if link.get("source") not in ids or link.get("target") not in ids]:
        raise FileFormatError(f"{path} has links between nodes it does not list, e.g. {dangling[0]}.")
    return data


def _node(graph: AttributionGraph, index: int, influence: float) -> dict:
    """The node at adjacency index `index`, with the fields circuit-tracer's `Node` has, in its order."""
    if index < graph.error_start:
        layer, pos, feature = graph.feature_nodes()[index].tolist()
        activation = float(graph.activations[graph.selected[index]])
        paired = (layer + feature) * (layer + feature + 1) // 2 + feature  # circuit-tracer's Cantor pairing
        return _fields(f"{layer}_{feature}_{pos}", paired, str(layer), pos, "cross layer transcoder",
                       f"{layer}_{feature}-0", graph.labels[index], influence, activation)  # fmt: skip
    if index < graph.token_start:
        layer, pos = divmod(index - graph.error_start, graph.n_pos)
        return _fields(f"0_{layer}_{pos}", -1, str(layer), pos, "mlp reconstruction error", f"{layer}_{pos}-0", "",
                       influence)  # fmt: skip
    if index < graph.logit_start:
        pos = index - graph.token_start
        token = int(graph.input_ids[pos])
        return _fields(f"E_{token}_{pos}", pos, "E", pos, "embedding", f"E_{token}-{pos}", "", influence)
    k = index - graph.logit_start
    token, probability, layer, pos = (
        int(graph.logit_ids[k]),
        float(graph.logit_probabilities[k]),
        graph.n_layers + 1,
        graph.n_pos - 1,
    )
    node = _fields(f"{layer}_{token}_{pos}", token, str(layer), pos, "logit", f"L_{token}-{pos}",
                   f'Output "{graph.logit_tokens[k]}" (p={probability:.3f})', None)  # fmt: skip
    return {**node, "token_prob": probability, "is_target_logit": k == 0}


def _fields(node_id, feature, layer, ctx_idx, feature_type, js_id, clerp, influence, activation=None) -> dict:
    return {
        "node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx_idx, "feature_type": feature_type,
        "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js_id,
        "clerp": clerp, "influence": influence, "activation": activation,
    }  # fmt: skip
