"""Attribution graphs: which features, error nodes and tokens drive which features and the output on one prompt,
through a local replacement model whose MLPs are transcoders (Ameisen et al. 2025, "Circuit Tracing: Revealing
Computational Graphs in Language Models", transformer-circuits.pub/2025/attribution-graphs; the circuit-tracer
package, whose graph JSON this writes for Neuronpedia's viewer).

    transcoders     per-layer (skip) transcoders or a cross-layer transcoder, checked against the model
    replacement     the local replacement model: attention and norms frozen, MLPs replaced, error nodes
    tracing         `attribute`: the adjacency of direct effects by batched backward passes
    graph           the graph, influence on the logits, pruning, replacement and completeness scores
    graph_json      circuit-tracer's / Neuronpedia's graph JSON, written and read back
"""

from .graph import AttributionGraph, PruneResult, graph_scores, node_influence, prune
from .graph_json import SCHEMA_VERSION, graph_json, read_graph_json, write_graph_json
from .replacement import FREEZABLE, ReplacementModel, model_sites
from .tracing import attribute
from .transcoders import TranscoderSet

__all__ = [
    "FREEZABLE",
    "SCHEMA_VERSION",
    "AttributionGraph",
    "PruneResult",
    "ReplacementModel",
    "TranscoderSet",
    "attribute",
    "graph_json",
    "graph_scores",
    "model_sites",
    "node_influence",
    "prune",
    "read_graph_json",
    "write_graph_json",
]
