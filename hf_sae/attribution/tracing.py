"""`attribute`: the attribution graph of one prompt (Ameisen et al. 2025, "Circuit Tracing: Revealing Computational
Graphs in Language Models"; the circuit-tracer package's `attribute`, whose algorithm and defaults this follows).

The local replacement model (`replacement`) is affine in its sources: token embeddings, active features (activation
times decoder) and error nodes. A target's value, a feature's pre-activation or a logit less the vocabulary's mean
logit, is therefore the sum of each source's direct effect plus constants (biases, and the BOS position's MLP
outputs). The direct effects on a batch of targets come from one backward pass: the prompt is repeated once per
target, each row's objective is its own target (the encoder row dotted with that layer's MLP input, or the logit
less the mean), and the gradients at each MLP output and at the embeddings are contracted with the sources' vectors
(activation-scaled decoder rows, error vectors, embeddings). One forward serves every batch.

With `max_feature_nodes` below the number of active features, features are visited in order of their influence on
the logits as estimated from the rows computed so far, re-ranked every few batches, as circuit-tracer does.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.utils import logging

from ..errors import ArgumentError
from ..models import max_positions
from .graph import AttributionGraph, influence, normalized
from .replacement import ReplacementModel, model_sites
from .transcoders import Transcoders, TranscoderSet

logger = logging.get_logger(__name__)

UPDATE_INTERVAL = 4  # batches between re-rankings of the features still to visit


def attribute(
    model: nn.Module,
    tokenizer,
    transcoders: Transcoders,
    prompt: str | Sequence[int] | Tensor,
    *,
    max_feature_nodes: int | None = 8192,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    top_logits: int = 10,
    logit_probability: float = 0.95,
    batch_size: int = 64,
    scan: str = "hf_sae",
) -> AttributionGraph:
    r"""
    The attribution graph of `prompt`: which features, error nodes and tokens drive which features and the top
    logits, through the local replacement model.

    Args:
        model (`nn.Module`): a causal LM of a family whose attention and norms can be frozen (Llama, Mistral,
            Qwen2, Qwen3).
        tokenizer: its tokenizer, to tokenize a text prompt and show tokens; `None` when `prompt` is token ids.
        transcoders (`dict[int, SaeModel]` or `CltModel`): a transcoder per layer reading `model.layers.{l}.mlp.input`
            and predicting `model.layers.{l}.mlp` (skip transcoders too), or a cross-layer transcoder over every layer.
        prompt (`str` or token ids): tokenized with the tokenizer's special tokens; position 0 (BOS) has no feature
            node.
        max_feature_nodes (`int`, *optional*, defaults to 8192): at most this many feature nodes, the most
            influential; `None` for all.
        node_threshold, edge_threshold (`float`): the shares of influence pruning keeps (`graph.prune`), recorded in
            the graph for `graph_json`.
        top_logits (`int`, defaults to 10), logit_probability (`float`, defaults to 0.95): the logit targets, the
            most probable next tokens until they hold `logit_probability`, at most `top_logits`.
        batch_size (`int`, defaults to 64): targets per backward pass (the prompt is repeated this many times).
        scan (`str`): the name Neuronpedia knows the model and transcoders by, written in the graph JSON.

    Example:

    ```python
    >>> saes = load_saes(repo)  # {hookpoint: transcoder}, keyed by the MLP input each one reads
    >>> transcoders = {layer: saes[f"model.layers.{layer}.mlp.input"] for layer in range(30)}
    >>> graph = attribute(lm, tokenizer, transcoders, "The capital of France is")
    >>> write_graph_json(graph, "graphs/", slug="capital")  # graphs/capital.json, for Neuronpedia's viewer
    ```
    """
    sites = model_sites(model)  # every check first: the architecture, the transcoders, the prompt, the arguments
    replacement_set = TranscoderSet.checked(transcoders, model, sites.mlps, sites.width)
    input_ids, text = _tokenize(model, tokenizer, prompt)
    _check_arguments(max_feature_nodes, top_logits, logit_probability, batch_size, node_threshold, edge_threshold)
    replacement = ReplacementModel(model, replacement_set, input_ids)
    active = replacement.activations.nonzero().cpu()  # (n_active, 3): layer, position, feature, sorted
    values = replacement.activations[tuple(active.T)]
    logit_ids, probabilities = (
        t.cpu() for t in _top_logits(replacement.real_logits[-1], top_logits, logit_probability)
    )
    n_selected = len(active) if max_feature_nodes is None else min(max_feature_nodes, len(active))
    tracer = _Tracer(replacement, active, values, min(batch_size, max(n_selected, len(logit_ids), 1)))
    logger.info(f"Attribution on {len(input_ids)} tokens: {len(active)} active features, {len(logit_ids)} logits")
    logit_rows = torch.cat([tracer.rows(logit_ids=ids) for ids in logit_ids.split(tracer.batch)])
    selected, feature_rows = _visit_features(tracer, logit_rows, probabilities, n_selected, batch_size)
    sources = torch.cat([selected, torch.arange(len(active), tracer.n_sources)])  # features kept, errors, tokens
    n_nodes = len(sources) + len(logit_ids)
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=tracer.dtype)  # rows: targets; columns: sources
    adjacency[:n_selected, : len(sources)] = feature_rows[:, sources]
    adjacency[len(sources) :, : len(sources)] = logit_rows[:, sources]
    decode = (lambda i: tokenizer.decode([int(i)])) if tokenizer is not None else (lambda i: str(int(i)))
    labels = [replacement_set.label(int(layer), int(feature)) for layer, _, feature in active[selected].tolist()]
    return AttributionGraph(
        prompt=text, input_ids=input_ids.cpu(), tokens=[decode(i) for i in input_ids], n_layers=sites.n_layers,
        active_features=active, activations=values.to(tracer.dtype).cpu(), selected=selected, labels=labels,
        logit_ids=logit_ids, logit_probabilities=probabilities.to(tracer.dtype).cpu(),
        logit_tokens=[decode(i) for i in logit_ids], adjacency=adjacency, scan=scan,
        node_threshold=node_threshold, edge_threshold=edge_threshold,
    )  # fmt: skip


class _Tracer:
    """One forward of `batch` copies of the prompt through the replacement, and the backward passes on it."""

    def __init__(self, replacement: ReplacementModel, active: Tensor, values: Tensor, batch: int):
        self.replacement, self.active, self.batch = replacement, active, batch
        self.n_layers, self.n_pos = replacement.mlp_in.shape[:2]
        self.n_sources = len(active) + (self.n_layers + 1) * self.n_pos  # features, errors, tokens
        transcoders, dtype = replacement.transcoders, replacement.mlp_in.dtype
        self.dtype = torch.promote_types(dtype, torch.float32)  # of the rows: float32, or float64 for a float64 model
        self.layer_spans = []  # per source layer: (start, end, positions, activation-scaled decoder rows)
        for layer in range(self.n_layers):
            index = (active[:, 0] == layer).nonzero()[:, 0]
            if len(index):
                rows = transcoders.decoder_rows(layer, active[index, 2]).to(dtype)  # (n, reach, d)
                scaled = rows * values[index, None, None].to(dtype)
                self.layer_spans.append((layer, int(index[0]), int(index[-1]) + 1, active[index, 1], scaled))
        encoders = [
            transcoders.encoder_rows(layer, active[active[:, 0] == layer, 2]) for layer in range(self.n_layers)
        ]
        self.encoders = torch.cat(encoders).to(dtype)  # (n_active, d), in the order of `active`
        device = replacement.model.device
        self.embeddings = replacement.embeddings.to(device)[None].repeat(batch, 1, 1).requires_grad_()
        self.terms = [
            t.to(device)[None].repeat(batch, 1, 1).requires_grad_()
            for t in replacement.feature_out + replacement.errors
        ]
        ids = replacement.input_ids.to(device)[None].expand(batch, -1)
        with torch.enable_grad(), replacement.frozen(self.terms, self.embeddings) as capture:
            logits = replacement.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
        self.demeaned = logits - logits.mean(-1, keepdim=True)  # (batch, vocab)
        self.mlp_in = capture.mlp_in

    def rows(self, *, logit_ids: Tensor | None = None, features: Tensor | None = None, last: bool = False) -> Tensor:
        """`(n, n_sources)`: the direct effect of every source on each target: the logits `logit_ids`, or the active
        features at indices `features`."""
        if logit_ids is not None:
            n = len(logit_ids)
            objective = self.demeaned[torch.arange(n), logit_ids.to(self.demeaned.device)].sum()
        else:
            n, objective = len(features), 0
            rows, targets = torch.arange(n), self.active[features]
            for layer in targets[:, 0].unique().tolist():
                mine = targets[:, 0] == layer
                x = self.mlp_in[layer][rows[mine], targets[mine, 1]]  # (m, d)
                objective = objective + (x * self.encoders[features[mine]].to(x.device)).sum()
        grads = torch.autograd.grad(
            objective, [self.embeddings, *self.terms], retain_graph=not last, allow_unused=True
        )
        return self._contract(grads, n)

    @torch.no_grad()
    def _contract(self, grads: Sequence[Tensor | None], n: int) -> Tensor:
        embed_grad, term_grads = grads[0], grads[1:]
        out = torch.zeros(n, self.n_sources, dtype=self.dtype)
        for layer, start, end, positions, scaled in self.layer_spans:
            for offset in range(scaled.shape[1]):  # the layers this layer's features write into
                if (grad := term_grads[layer + offset]) is not None:
                    g = grad[:n, positions.to(grad.device)].to(self.dtype)  # (n, m, d)
                    out[:, start:end] += torch.einsum(
                        "bmd,md->bm", g, scaled[:, offset].to(self.dtype).to(g.device)
                    ).cpu()
        errors, tokens = len(self.active), len(self.active) + self.n_layers * self.n_pos
        for layer, grad in enumerate(term_grads):
            if grad is not None:
                error = self.replacement.errors[layer].to(self.dtype).to(grad.device)
                out[:, errors + layer * self.n_pos : errors + (layer + 1) * self.n_pos] = torch.einsum(
                    "bpd,pd->bp", grad[:n].to(self.dtype), error
                ).cpu()
        if embed_grad is not None:
            embeddings = self.replacement.embeddings.to(self.dtype).to(embed_grad.device)
            out[:, tokens:] = torch.einsum("bpd,pd->bp", embed_grad[:n].to(self.dtype), embeddings).cpu()
        return out


def _visit_features(tracer: _Tracer, logit_rows: Tensor, probabilities: Tensor, n_selected: int, batch_size: int):
    """`(selected, rows)`: the active features made nodes (sorted) and their rows; all of them, or the
    `n_selected` most influential found by re-ranking on the rows computed so far."""
    n_active = len(tracer.active)
    rows = torch.zeros(n_selected, tracer.n_sources, dtype=tracer.dtype)
    order = torch.zeros(n_selected, dtype=torch.long)  # the active feature of each computed row
    visited, done = torch.zeros(n_active, dtype=torch.bool), 0
    progress = tqdm(total=n_selected, desc="Attribution", disable=n_selected < 10 * batch_size, leave=False)
    while done < n_selected:
        if n_selected == n_active:
            pending = torch.arange(n_active)
        else:
            estimate = _partial_influence(logit_rows, rows[:done], order[:done], probabilities, n_active)
            ranked = estimate.argsort(descending=True)
            pending = ranked[~visited[ranked]][: min(UPDATE_INTERVAL * batch_size, n_selected - done)]
        for batch in pending.split(batch_size):
            end = done + len(batch)
            rows[done:end] = tracer.rows(features=batch, last=end == n_selected)
            order[done:end], visited[batch] = batch, True
            done = end
            progress.update(len(batch))
    progress.close()
    selected = order.sort()
    return selected.values, rows[selected.indices]


def _partial_influence(logit_rows: Tensor, feature_rows: Tensor, order: Tensor, probabilities: Tensor, n_active: int):
    """Each active feature's influence on the logits through the rows computed so far (logits, visited features)."""
    n_logits, n_sources = len(logit_rows), logit_rows.shape[1]
    # A square matrix over [sources, logits], holding only the rows computed; paths end at the weighted logits.
    matrix = torch.zeros(n_sources + n_logits, n_sources + n_logits, dtype=logit_rows.dtype)
    matrix[n_sources:, :n_sources] = logit_rows
    matrix[order, :n_sources] = feature_rows
    weights = torch.zeros(n_sources + n_logits, dtype=logit_rows.dtype)
    weights[n_sources:] = probabilities
    return influence(normalized(matrix), weights)[:n_active]


def _top_logits(logits: Tensor, top: int, probability: float) -> tuple[Tensor, Tensor]:
    """The most probable tokens until they hold `probability`, at most `top`, and their probabilities."""
    probs = logits.float().softmax(-1)
    values, ids = probs.topk(min(top, len(probs)))
    keep = int(torch.searchsorted(values.cumsum(0), torch.tensor(probability))) + 1
    return ids[:keep], values[:keep]


def _tokenize(model: nn.Module, tokenizer, prompt) -> tuple[Tensor, str]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ArgumentError("A text prompt needs the model's tokenizer; pass it, or pass the prompt as token ids.")
        ids = tokenizer(prompt, return_tensors="pt").input_ids[0]
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)
    text = (
        prompt if isinstance(prompt, str) else (tokenizer.decode(ids) if tokenizer is not None else str(ids.tolist()))
    )
    limit, vocab = max_positions(model), model.get_output_embeddings().weight.shape[0]
    if len(ids) == 0:
        raise ArgumentError("The prompt has no tokens; attribution needs at least one.")
    if limit is not None and len(ids) > limit:
        raise ArgumentError(
            f"The prompt has {len(ids)} tokens, more than the model's context of {limit} "
            "(`max_position_embeddings`). Shorten it."
        )
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ArgumentError(f"Token ids must lie in [0, {vocab}), the model's vocabulary; got {ids.tolist()}.")
    return ids, text


def _check_arguments(max_feature_nodes, top_logits, logit_probability, batch_size, node_threshold, edge_threshold):
    for name, value in (("top_logits", top_logits), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"`{name}` must be a positive integer; got {value!r}.")
    if max_feature_nodes is not None and (not isinstance(max_feature_nodes, int) or max_feature_nodes < 0):
        raise ArgumentError(f"`max_feature_nodes` must be an integer >= 0 or None (all); got {max_feature_nodes!r}.")
    for name, value in (("logit_probability", logit_probability), ("node_threshold", node_threshold),
                        ("edge_threshold", edge_threshold)):  # fmt: skip
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ArgumentError(f"`{name}` is a share, in [0, 1]; got {value!r}.")
