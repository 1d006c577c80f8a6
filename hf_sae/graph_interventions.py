"""Testing an attribution graph on the real model: its feature nodes switched off or scaled through `SaeHooks`, each
per-layer transcoder spliced at its MLP with its error kept, and the top logits the model then predicts beside those
it predicted untouched.

A node is named by its graph id, `{layer}_{feature}_{pos}`; `"12_345_3"` switches it off, `"12_345_3:2"` clamps it at
twice the activation the graph recorded, at its position only. The prompt's token ids are read back from the graph's
embedding nodes (`E_{token}_{pos}`), so a graph written by `write_graph_json` or circuit-tracer is all it takes.
A cross-layer transcoder writes into every later layer, which `SaeHooks` does not splice: its edits run through hooks
on the MLPs instead. With every error kept, an MLP's output is its real output plus the edited latents' change times
their decoders, so a latent clamped at layer l at one position adds (value - its activation there) times its decoder
row into the MLP output of every layer l' >= l, its activation read from the MLP input as the edits left it.
"""

import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import torch
from torch import nn

from .errors import ArgumentError
from .hooks import SaeHooks
from .modeling_clt import CltModel
from .modeling_sae import SaeModel

FEATURE_TYPE = "cross layer transcoder"  # circuit-tracer's name for every transcoder feature node
MAX_SCALE = 1e3  # far beyond any useful clamp, yet no overflow even in float16


class NodeEdit(NamedTuple):
    layer: int
    position: int
    feature: int
    value: float  # what the feature is clamped at: the graph's activation times the scale


class LogitRow(NamedTuple):
    token_id: int
    token: str
    logit: float  # after the edits
    probability: float
    base_logit: float  # the same token's logit without them
    base_probability: float


def prompt_ids(graph: Mapping) -> list[int]:
    """The prompt's token ids, from the graph's embedding nodes (`E_{token}_{pos}`), one per position."""
    found = {}
    for node in graph.get("nodes", []):
        if node.get("feature_type") == "embedding":
            parts = str(node.get("node_id")).split("_")
            if len(parts) == 3 and parts[1].isdigit():
                found[node.get("ctx_idx")] = int(parts[1])
    if not found or sorted(found) != list(range(len(found))):
        raise ArgumentError(
            f"Expected the graph to hold an embedding node `E_{{token}}_{{pos}}` at every position, as graph JSON "
            f"written by `write_graph_json` or circuit-tracer does; found positions {sorted(found)}."
        )
    return [found[pos] for pos in range(len(found))]


class GraphInterventions:
    r"""
    Feature nodes of attribution graphs switched off or scaled in `model`, through `SaeHooks` over a transcoder per
    layer (`{layer: SaeModel}` reading `model.layers.{layer}.mlp.input` and writing `model.layers.{layer}.mlp`).
    One forward runs at a time: the app serves every user with one model.
    """

    def __init__(self, model: nn.Module, tokenizer, transcoders: Mapping[int, SaeModel] | CltModel):
        self.model, self.tokenizer, self.lock = model, tokenizer, threading.Lock()  # one forward at a time
        if isinstance(transcoders, CltModel):
            self.clt, self.transcoders, self.hooks = transcoders.eval(), {}, None
            self.layers = set(range(transcoders.config.n_layers))
            return
        if not isinstance(transcoders, Mapping) or not all(
            isinstance(t, SaeModel) and t.config.is_transcoder for t in transcoders.values()
        ):
            raise ArgumentError(
                "Expected a transcoder per layer, `{layer: SaeModel}` with `output_hookpoint` set, or a CltModel; got "
                f"{type(transcoders).__name__}."
            )
        self.clt, self.transcoders = None, dict(transcoders)
        self.layers = {int(layer) for layer in transcoders}
        # Every token: the graph has nodes wherever attribution found active features, special tokens included.
        self.hooks = SaeHooks(model, {f"layer{layer}": sae for layer, sae in transcoders.items()}, all_tokens=True)

    def parse(self, graph: Mapping, spec: str) -> list[NodeEdit]:
        """`"node_id[:scale], ..."` -> the edits; a node alone is switched off (scale 0)."""
        features = {n.get("node_id"): n for n in graph.get("nodes", []) if n.get("feature_type") == FEATURE_TYPE}
        others = {n.get("node_id") for n in graph.get("nodes", [])}
        edits = []
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            node_id, _, scale_text = part.partition(":")
            node = features.get(node_id.strip())
            if node is None:
                raise ArgumentError(
                    f"Expected feature nodes of the graph as `layer_feature_pos[:scale]`; {node_id.strip()!r} is "
                    f"{'not a feature node' if node_id.strip() in others else 'no node'} of it. Hover over a circle "
                    "in the graph to see its id."
                )
            try:
                scale = float(scale_text) if scale_text.strip() else 0.0
            except ValueError:
                raise ArgumentError(f"Expected a number after `{node_id.strip()}:`; got {scale_text!r}.") from None
            if not abs(scale) <= MAX_SCALE:  # NaN fails this too
                raise ArgumentError(f"A scale is a number from {-MAX_SCALE:g} to {MAX_SCALE:g}; got {scale_text}.")
            layer = int(node["layer"])
            if layer not in self.layers:
                raise ArgumentError(f"Node {node['node_id']} is at layer {layer}, which has no transcoder here; "
                                    f"the layers with one: {sorted(self.layers)}.")  # fmt: skip
            feature = int(str(node["node_id"]).split("_")[1])  # the JSON's `feature` is circuit-tracer's paired index
            edits.append(NodeEdit(layer, int(node["ctx_idx"]), feature, scale * float(node.get("activation") or 0.0)))
        if not edits:
            raise ArgumentError("Name at least one feature node, e.g. `1_7_3` (switched off) or `1_7_3:2` (doubled).")
        return edits

    @torch.no_grad()
    def last_logits(self, input_ids: list[int], edits: list[NodeEdit] = ()) -> torch.Tensor:
        """`(vocab,)`: the logits at the last position, with each transcoder spliced (its error kept) and `edits`."""
        vocab = self.model.get_input_embeddings().num_embeddings
        if max(input_ids) >= vocab:
            raise ArgumentError(
                f"The graph's prompt holds token id {max(input_ids)}, beyond this LM's vocabulary of {vocab}: it was "
                "traced on another model. Open it with the LM it was traced on."
            )
        ids = torch.tensor([input_ids], device=self.model.device)
        if self.clt is not None:
            with self.lock, _clt_edits(self.model, self.clt, edits):
                return self.model(input_ids=ids).logits[0, -1].float()
        with self.lock, ExitStack() as stack:
            stack.enter_context(self.hooks.splice(error_term=True))
            for edit in edits:  # each clamped at its own position, in its own layer
                name, values = f"layer{edit.layer}", {edit.feature: edit.value}
                stack.enter_context(self.hooks.steer(values, mode="clamp", hookpoint=name, positions=[edit.position]))
            return self.model(input_ids=ids).logits[0, -1].float()

    def top_logits(self, graph: Mapping, spec: str, top: int = 10) -> list[LogitRow]:
        """The `top` most probable next tokens with the nodes of `spec` edited, each beside its logit without."""
        edits = self.parse(graph, spec)
        input_ids = prompt_ids(graph)
        base, edited = self.last_logits(input_ids), self.last_logits(input_ids, edits)
        base_p, edited_p = base.softmax(-1), edited.softmax(-1)
        rows = []
        for token_id in edited_p.topk(min(top, len(edited_p))).indices.tolist():
            token = self.tokenizer.decode([token_id]) if self.tokenizer is not None else str(token_id)
            rows.append(LogitRow(token_id, token, float(edited[token_id]), float(edited_p[token_id]),
                                 float(base[token_id]), float(base_p[token_id])))  # fmt: skip
        return rows


@contextmanager
def _clt_edits(model: nn.Module, clt: CltModel, edits: list[NodeEdit]) -> Iterator[None]:
    """Forward hooks on every MLP the CLT replaces: at layer l, each edit of layer l reads its latent's activation from
    the MLP input and keeps (value - activation); every MLP output from layer l on gets those changes times the
    decoder rows (the error kept: the real output plus the change of the prediction)."""
    cfg, changes = clt.config, []  # (layer, position, feature, change), filled as the forward reaches each layer

    def hook(layer: int):
        def run(module, args, output):
            x = args[0][0]  # (seq, d_in): batch row 0, the prompt
            mine = [edit for edit in edits if edit.layer == layer]
            if mine:
                stacked = torch.full(
                    (x.shape[0], cfg.n_layers, cfg.num_latents), -1e30, dtype=x.dtype, device=x.device
                )
                weights, bias = clt.W_enc[layer].to(x.dtype), clt.b_enc[layer].to(x.dtype)
                stacked[:, layer] = x @ weights.T + bias  # this layer's pre-activations; the others never fire
                z = clt.activate(stacked)[:, layer]
                changes.extend(
                    (e.layer, e.position, e.feature, e.value - float(z[e.position, e.feature])) for e in mine
                )
            out = output.clone()
            for source, position, feature, change in changes:
                out[0, position] += change * clt.W_dec[source][feature, layer - source].to(out.dtype)
            return out

        return run

    modules = [model.get_submodule(site) for site in cfg.output_hookpoints]
    handles = [module.register_forward_hook(hook(layer)) for layer, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
