"""An attribution graph: its nodes, the adjacency of direct effects between them, and pruning by influence on the
logits (Ameisen et al. 2025, "Circuit Tracing", section "Graph pruning"; the circuit-tracer package's `prune_graph`,
whose rules and defaults are kept: 80% of node influence, 98% of edge influence).

Nodes, in adjacency order: the selected active features (sorted by layer, position, feature), the error nodes
(layer-major, one per layer and position), the token embeddings (one per position), the logits. Row t, column s holds
the direct effect of source s on target t; only features and logits have incoming edges.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import ArgumentError


@dataclass
class AttributionGraph:
    r"""
    The unpruned graph of one prompt, as `attribute` returns it.

    Attributes:
        prompt (`str`): the text (or the decoded token ids).
        input_ids (`torch.LongTensor` of shape `(n_pos,)`): the prompt's tokens; `tokens` their strings.
        n_layers (`int`): the model's layer count.
        active_features (`torch.LongTensor` of shape `(n_active, 3)`): (layer, position, feature) of every active
            feature; `activations` `(n_active,)` their values.
        selected (`torch.LongTensor` of shape `(n_features,)`): which of them are nodes (all but beyond
            `max_feature_nodes`); `labels` one string per selected feature.
        logit_ids, logit_probabilities (`(n_logits,)`): the target logits at the last position; `logit_tokens`.
        adjacency (`torch.Tensor` of shape `(n_nodes, n_nodes)`): direct effects, row target, column source.
        scan, node_threshold, edge_threshold: what the JSON records, and the pruning's thresholds.
    """

    prompt: str
    input_ids: Tensor
    tokens: list[str]
    n_layers: int
    active_features: Tensor
    activations: Tensor
    selected: Tensor
    labels: list[str]
    logit_ids: Tensor
    logit_probabilities: Tensor
    logit_tokens: list[str]
    adjacency: Tensor
    scan: str = "hf_sae"
    node_threshold: float = 0.8
    edge_threshold: float = 0.98

    @property
    def n_pos(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return len(self.selected)

    @property
    def n_logits(self) -> int:
        return len(self.logit_ids)

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def feature_nodes(self) -> Tensor:
        """`(n_features, 3)`: (layer, position, feature) of each feature node, in adjacency order."""
        return self.active_features[self.selected]

    def logit_weights(self) -> Tensor:
        """`(n_nodes,)`: each logit's probability at its node, 0 elsewhere, the weights influence is measured by."""
        weights = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        weights[self.logit_start :] = self.logit_probabilities.to(weights.dtype)
        return weights


class PruneResult(NamedTuple):
    node_mask: Tensor  # (n_nodes,) bool: the nodes kept
    edge_mask: Tensor  # (n_nodes, n_nodes) bool: the edges kept
    cumulative_scores: Tensor  # (n_nodes,): the share of all node influence held by the nodes at least as influential


def normalized(adjacency: Tensor) -> Tensor:
    """Each row's absolute values over their sum: the share of each source in its target's inputs."""
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(matrix: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """`weights @ (A + A^2 + ...)`: the influence of every node on the weighted targets through paths of any length.
    The graph is acyclic (edges go forward in layers and positions), so the series ends."""
    step = weights @ matrix
    total = step.clone()
    for _ in range(max_iter):
        step = step @ matrix
        if not step.any():
            return total
        total += step
    raise ArgumentError(f"The influence series did not end after {max_iter} steps: the adjacency has a cycle.")


def node_influence(graph: AttributionGraph) -> Tensor:
    return influence(normalized(graph.adjacency), graph.logit_weights())


def threshold_for(scores: Tensor, share: float) -> Tensor:
    """The smallest score among those that, taken largest first, hold `share` of the total."""
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), len(ordered) - 1)
    return ordered[index]


def prune(
    graph: AttributionGraph, node_threshold: float | None = None, edge_threshold: float | None = None
) -> PruneResult:
    """Keep the nodes holding `node_threshold` of the influence on the logits (tokens and logits always), then the
    edges holding `edge_threshold` of the edge influence among them; then drop, until nothing changes, features and
    errors left without outgoing edges and features left without incoming ones."""
    node_threshold = graph.node_threshold if node_threshold is None else node_threshold
    edge_threshold = graph.edge_threshold if edge_threshold is None else edge_threshold
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ArgumentError(f"`{name}` is a share of influence, in [0, 1]; got {value!r}.")
    weights, fixed = graph.logit_weights(), graph.token_start  # tokens and logits start at `fixed`
    scores = influence(normalized(graph.adjacency), weights)
    node_mask = scores >= threshold_for(scores, node_threshold)
    node_mask[fixed:] = True
    pruned = graph.adjacency * node_mask[:, None] * node_mask[None, :]
    matrix = normalized(pruned)
    edge_scores = matrix * (influence(matrix, weights) + weights)[:, None]
    edge_mask = edge_scores >= threshold_for(edge_scores.flatten(), edge_threshold)
    while True:
        before = node_mask.clone()
        node_mask[:fixed] &= edge_mask[:, :fixed].any(0)  # features and errors need an outgoing edge
        node_mask[: graph.n_features] &= edge_mask[: graph.n_features].any(1)  # features need an incoming one
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        if torch.equal(before, node_mask):
            break
    order = scores.sort(descending=True)
    cumulative = torch.zeros_like(scores)
    cumulative[order.indices] = order.values.cumsum(0) / order.values.sum().clamp(min=1e-30)
    return PruneResult(node_mask, edge_mask, cumulative)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """`(replacement, completeness)` as circuit-tracer scores a graph: the share of the tokens' and errors'
    influence on the logits that comes from the tokens, and the influence-weighted share of every node's inputs that
    do not come from error nodes. 1.0 each for a graph without error."""
    matrix, weights = normalized(graph.adjacency), graph.logit_weights()
    scores = influence(matrix, weights)
    errors = slice(graph.error_start, graph.token_start)
    token_influence, error_influence = scores[graph.token_start : graph.logit_start].sum(), scores[errors].sum()
    replacement = token_influence / (token_influence + error_influence).clamp(min=1e-30)
    output_influence = scores + weights
    non_error = 1 - matrix[:, errors].sum(-1)
    completeness = (non_error * output_influence).sum() / output_influence.sum().clamp(min=1e-30)
    return float(replacement), float(completeness)
