"""From arguments to files for circuits: what `hf-sae attribute` and `hf-sae convert --to circuit_tracer` run. The
argument groups checked their values as they were built; each runner loads and checks the transcoders against the
LM's config before the LM's weights load.

    run_attribute                  attribute   the pruned attribution graph of one prompt: JSON as circuit-tracer
                                               writes it, and a static HTML page
    convert_transcoders            convert --to circuit_tracer: a transcoder set or a cross-layer transcoder
    check_transcoders_fit_model    the layer count and width of the transcoders against the LM's config
"""

from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

from .arguments import AttributeArguments, ConvertArguments
from .attribution import AttributionGraph, attribute, graph_scores, model_sites, read_graph_json, write_graph_json
from .convert.circuit_tracer import to_circuit_tracer
from .errors import ArgumentError
from .graph_page import write_graph_page
from .hub import load_transcoders
from .modeling_clt import CltModel
from .modeling_sae import SaeModel
from .models import load_model, model_skeleton
from .precision import default_device

logger = logging.get_logger(__name__)


@dataclass
class AttributionRun:
    """What `run_attribute` wrote and measured."""

    path: Path  # <output_dir>/<slug>.json, beside graph-metadata.json
    page: Path  # <output_dir>/<slug>.html, the graph as a static page
    graph_json: dict  # the pruned graph as written, read back
    graph: AttributionGraph  # the unpruned graph
    replacement_score: float
    completeness_score: float


def run_attribute(args: AttributeArguments) -> AttributionRun:
    """`hf-sae attribute`: the attribution graph of `args.prompt` through the transcoders (Ameisen et al. 2025,
    "Circuit Tracing"), pruned and written as circuit-tracer's graph JSON and a static HTML page beside it, with its
    replacement and completeness scores. Feature nodes carry the transcoders' feature labels where they have feature
    metadata.

    Example:

    ```python
    >>> run = run_attribute(AttributeArguments(prompt="The capital of France is", transcoders="me/transcoders"))
    >>> run.path, run.replacement_score
    ```
    """
    transcoders = load_transcoders(args.transcoders, revision=args.revision)  # a missing or unknown format fails here
    check_transcoders_fit_model(transcoders, args.model)
    model, tokenizer = load_model(args.model, device=args.device or default_device())
    model.requires_grad_(False)
    if isinstance(transcoders, CltModel):
        transcoders = transcoders.to(model.device)
    else:
        transcoders = {layer: sae.to(model.device) for layer, sae in transcoders.items()}
    graph = attribute(model, tokenizer, transcoders, args.prompt, max_feature_nodes=args.max_feature_nodes,
                      node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                      top_logits=args.top_logits, logit_probability=args.logit_probability,
                      batch_size=args.batch_size)  # fmt: skip
    path = write_graph_json(graph, args.output_dir, args.graph_slug)
    replacement, completeness = graph_scores(graph)
    logger.info(f"Attribution graph written to {path}: replacement {replacement:.3f}, completeness {completeness:.3f}")
    data = read_graph_json(path)
    page = write_graph_page(data, path.with_suffix(".html"))
    return AttributionRun(path, page, data, graph, replacement, completeness)


def check_transcoders_fit_model(transcoders: dict[int, SaeModel] | CltModel, model_name: str | None) -> None:
    """A model family attribution cannot freeze, or transcoders of another layer count or width than the LM's, is
    refused from the LM's config alone, before its weights load. `attribute` checks the rest (each hookpoint)."""
    skeleton = model_skeleton(model_name)
    if skeleton is None:  # a GGUF file, or the built-in model before its first conversion: attribute() checks
        return
    sites = model_sites(skeleton)
    n_layers, width = len(sites.mlps), sites.width
    if isinstance(transcoders, CltModel):
        layers, widths = list(range(transcoders.config.n_layers)), {transcoders.config.d_in}
    else:
        layers, widths = sorted(transcoders), {sae.config.d_in for sae in transcoders.values()}
    name = model_name or "the built-in model"
    if layers != list(range(n_layers)):
        raise ArgumentError(
            f"The transcoders cover layers {layers}, but {name} has {n_layers} layers (0..{n_layers - 1}); "
            "attribution replaces every MLP. Pass transcoders trained on every layer of this model, or the model "
            "they were trained on as --model."
        )
    if widths != {width}:
        raise ArgumentError(
            f"The transcoders read width {sorted(widths)}, but {name}'s residual stream has width {width}. Pass the "
            "model they were trained on as --model."
        )


def convert_transcoders(args: ConvertArguments) -> dict[str, Path]:
    """`hf-sae convert --to circuit_tracer`: the transcoders of `args.src` (any source `load_transcoders` reads)
    written as one circuit-tracer folder at `args.dst`. What circuit-tracer cannot hold (TopK) is refused before
    anything is written. Returns `{kind: folder}`."""
    dst = Path(args.dst)
    if dst.exists() and any(dst.iterdir()) and not args.overwrite:
        raise ArgumentError(f"{dst} exists and is not empty. Choose another destination, or pass --overwrite.")
    transcoders = load_transcoders(args.src, revision=args.revision, token=args.token)
    kind = "cross_layer_transcoder" if isinstance(transcoders, CltModel) else "transcoder_set"
    return {kind: to_circuit_tracer(transcoders, dst)}
