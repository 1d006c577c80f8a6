"""An attribution graph as a picture: one self-contained HTML page (no server, no network, no CDN), and the same SVG
with the same script in the explorer's graph tab.

One layout rule for both: the prompt's tokens are columns and the layers rows, the embeddings at the bottom and the
logits at the top; within a cell the nodes stand side by side, the most influential first. Features are circles,
error nodes grey squares, embeddings and logits rounded bars. A node's size follows its influence: the graph JSON's
`influence` is circuit-tracer's cumulative share (the share of all influence held by the nodes at least as influential
as it, so the most influential node has the smallest), hence the size grows with `1 - influence`; a logit's follows its
probability. Links are drawn by |weight| (width and opacity) and coloured by sign (orange excites, blue inhibits).

Every string from the graph (tokens, labels, contexts) is written escaped, in text or in `data-` attributes that the
script reads back with `textContent`: a label holding markup shows as text and never runs.
"""

import html
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from .errors import ArgumentError
from .layout import write_text

TEMPLATE = "graph_template.html"
HEAD_START, HEAD_END, SVG_MARKER, TITLE_MARKER = "<!--HEAD-->", "<!--/HEAD-->", "<!--GRAPH-->", "<!--TITLE-->"
ROW_HEIGHT, NODE_GAP, MIN_COLUMN, MARGIN_LEFT, MARGIN_TOP, MARGIN_BOTTOM = 56, 22, 84, 70, 64, 44
TOKEN_CHARS, CHAR_WIDTH = 28, 7  # a token shown at most this long under its column, which is made wide enough
MIN_RADIUS, MAX_RADIUS = 3.0, 9.5
POSITIVE, NEGATIVE = "rgb(232,89,12)", "rgb(28,126,214)"
KINDS = {"mlp reconstruction error": "error", "embedding": "embedding", "logit": "logit"}  # else: a feature


class PlacedNode(NamedTuple):
    index: int  # in the graph's `nodes`
    node_id: str
    kind: str  # feature | error | embedding | logit
    column: int  # the token position
    row: int  # 0 the embeddings, layer + 1 the features and errors of a layer, n_layers + 1 the logits
    x: float
    y: float
    radius: float
    label: str


class GraphLayout(NamedTuple):
    nodes: list[PlacedNode]
    columns: list[tuple[float, float]]  # (left, right) of each token's column
    rows: list[float]  # the y of each row's centre, row 0 (embeddings) lowest on the page
    width: float
    height: float


def _nodes_of(graph: Mapping) -> list[dict]:
    """The graph's nodes, checked for what the layout reads."""
    nodes = graph.get("nodes") if isinstance(graph, Mapping) else None
    if not isinstance(nodes, list):
        got = sorted(graph) if isinstance(graph, Mapping) else type(graph).__name__
        raise ArgumentError(f"Expected an attribution graph's JSON (`metadata`, `nodes`, `links`); got {got}.")
    for node in nodes:
        position = node.get("ctx_idx") if isinstance(node, dict) else None
        if not isinstance(node, dict) or "node_id" not in node or not isinstance(position, int) or position < 0:
            raise ArgumentError(
                f"Expected every graph node to have a `node_id` and a whole `ctx_idx` >= 0, as circuit-tracer's "
                f"graph JSON has; got {str(node)[:200]}. Write the graph again with `write_graph_json`."
            )
    return nodes


def _kind(node: dict) -> str:
    return KINDS.get(node.get("feature_type"), "feature")


def _layer_rows(nodes: list[dict]) -> tuple[list[int], int]:
    """Each node's row, and the number of rows: the logits' layer is the model's layer count + 1."""
    layers = [int(n["layer"]) for n in nodes if _kind(n) in ("feature", "error") and str(n.get("layer")).isdigit()]
    logit_layers = [int(n["layer"]) for n in nodes if _kind(n) == "logit" and str(n.get("layer")).isdigit()]
    top = max(logit_layers or [max(layers, default=-1) + 2])
    rows = []
    for node in nodes:
        kind = _kind(node)
        if kind == "embedding":
            rows.append(0)
        elif kind == "logit":
            rows.append(top)
        elif str(node.get("layer")).isdigit():
            rows.append(int(node["layer"]) + 1)
        else:
            raise ArgumentError(f"Expected a whole layer number for graph node {node['node_id']!r}; got "
                                f"{node.get('layer')!r}.")  # fmt: skip
    return rows, top + 1


def importance(node: dict) -> float:
    """What a node's size follows, in [0, 1]: 1 - its cumulative influence share, or a logit's probability."""
    value = node.get("token_prob") if _kind(node) == "logit" else node.get("influence")
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        return 0.0
    value = min(max(float(value), 0.0), 1.0)
    return value if _kind(node) == "logit" else 1.0 - value


def node_label(node: dict, tokens: Sequence[str]) -> str:
    """What hovering a node shows first: its label (clerp), or what the node is."""
    if node.get("clerp"):
        return str(node["clerp"])
    position, kind = node["ctx_idx"], _kind(node)
    token = repr(tokens[position]) if position < len(tokens) else f"position {position}"
    if kind == "embedding":
        return f"Embedding of {token}"
    if kind == "error":
        return f"Transcoder error at layer {node.get('layer')}, {token}"
    if kind == "logit":
        return f"Logit {node.get('feature')}"
    return f"Feature {feature_key(node).partition('_')[2]} of layer {node.get('layer')} at {token}"


def feature_key(node: dict) -> str:
    """`"{layer}_{feature}"` of a feature node, from its id `{layer}_{feature}_{pos}` (the JSON's `feature` field is
    circuit-tracer's pairing of layer and feature): how `contexts` are keyed."""
    return str(node["node_id"]).rsplit("_", 1)[0]


def graph_layout(graph: Mapping) -> GraphLayout:
    """Where each node of `graph` (circuit-tracer's graph JSON) is drawn: its token's column, its layer's row."""
    nodes = _nodes_of(graph)
    tokens = [str(t) for t in graph.get("metadata", {}).get("prompt_tokens", [])]
    rows, n_rows = _layer_rows(nodes)
    n_columns = max([len(tokens)] + [n["ctx_idx"] + 1 for n in nodes])
    cells: dict[tuple[int, int], list[int]] = {}
    for index in sorted(range(len(nodes)), key=lambda i: importance(nodes[i]), reverse=True):
        cells.setdefault((nodes[index]["ctx_idx"], rows[index]), []).append(index)
    widest = [max([len(c) for (col, _), c in cells.items() if col == column] or [0]) for column in range(n_columns)]
    columns, left = [], MARGIN_LEFT
    for column, count in enumerate(widest):
        text = len(_short(tokens[column])) * CHAR_WIDTH + 14 if column < len(tokens) else 0
        columns.append((left, left + max(MIN_COLUMN, count * NODE_GAP + NODE_GAP, text)))
        left = columns[-1][1]
    row_y = [MARGIN_TOP + (n_rows - 1 - row + 0.5) * ROW_HEIGHT for row in range(n_rows)]
    placed = []
    for (column, row), cell in cells.items():
        centre = sum(columns[column]) / 2
        for k, index in enumerate(cell):
            node, x = nodes[index], centre + (k - (len(cell) - 1) / 2) * NODE_GAP
            radius = MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * importance(node)
            label = node_label(node, tokens)
            placed.append(PlacedNode(index, node["node_id"], _kind(node), column, row, x, row_y[row], radius, label))
    placed.sort(key=lambda p: p.index)
    height = MARGIN_TOP + n_rows * ROW_HEIGHT + MARGIN_BOTTOM
    return GraphLayout(placed, columns, row_y, left + 20, height)


def _short(token: str) -> str:
    return token if len(token) <= TOKEN_CHARS else token[: TOKEN_CHARS - 1] + "…"


def _attr(value) -> str:
    return html.escape(str(value), quote=True)


def _node_svg(node: PlacedNode, source: dict, contexts: list[str]) -> str:
    details = [node.kind, f"layer {source.get('layer')}", f"position {node.column}"]
    for key in ("activation", "influence", "token_prob"):
        value = source.get(key)
        if isinstance(value, numbers.Real) and math.isfinite(value) and (value or key != "token_prob"):
            details.append(f"{key.replace('_', ' ')} {value:.3g}")
    data = (f'class="node {node.kind}" data-id="{_attr(node.node_id)}" data-label="{_attr(node.label)}" '
            f'data-details="{_attr(" · ".join(details))}" data-contexts="{_attr(json.dumps(contexts))}"')  # fmt: skip
    x, y, r = node.x, node.y, node.radius
    if node.kind == "feature":
        return f'<circle {data} cx="{x:.1f}" cy="{y:.1f}" r="{r:.2f}"></circle>'
    if node.kind == "error":
        return f'<rect {data} x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.2f}" height="{2 * r:.2f}"></rect>'
    bar = f'<rect {data} x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.2f}" height="{2 * r:.2f}" rx="3"></rect>'
    if node.kind == "logit":  # the output token above its bar, slanted so that neighbours do not overlap
        text = node.label.split('"')[1] if node.label.count('"') >= 2 else node.label
        at = f'x="{x:.1f}" y="{y - r - 4:.1f}" transform="rotate(-40 {x:.1f} {y - r - 4:.1f})"'
        bar += f'<text class="logit-label" {at}>{html.escape(_short(text))}</text>'
    return bar


def _links_svg(graph: Mapping, placed: dict[str, PlacedNode]) -> str:
    links = [link for link in graph.get("links", []) if link.get("source") in placed and link.get("target") in placed]
    strongest = max([abs(float(link.get("weight", 0.0))) for link in links] or [0.0]) or 1.0
    parts = []
    for link in sorted(links, key=lambda link: abs(float(link.get("weight", 0.0)))):  # the strongest drawn on top
        weight = float(link.get("weight", 0.0))
        share = abs(weight) / strongest
        a, b = placed[link["source"]], placed[link["target"]]
        colour = POSITIVE if weight >= 0 else NEGATIVE
        parts.append(
            f'<line class="link" data-source="{_attr(a.node_id)}" data-target="{_attr(b.node_id)}" '
            f'data-weight="{weight:.4g}" x1="{a.x:.1f}" y1="{a.y:.1f}" x2="{b.x:.1f}" y2="{b.y:.1f}" '
            f'stroke="{colour}" stroke-width="{0.4 + 3.6 * share:.2f}" stroke-opacity="{0.12 + 0.78 * share:.3f}">'
            "</line>"
        )
    return "".join(parts)


def graph_svg(graph: Mapping, contexts: Mapping[str, Sequence[str]] | None = None) -> str:
    r"""
    The graph as an HTML fragment (a `div.hf-graph` holding one SVG) that the script of `graph_head()` makes
    interactive: hovering a node shows its label, details and top contexts; clicking it highlights its links.

    Args:
        graph (`Mapping`): circuit-tracer's graph JSON, as `graph_json` returns it or `read_graph_json` reads it.
        contexts (`Mapping[str, Sequence[str]]`, *optional*): top contexts of features, keyed `"{layer}_{feature}"`
            (`feature_key`); a node's own `top_contexts` list (where the JSON carries one) is shown otherwise.
    """
    layout = graph_layout(graph)
    sources = graph["nodes"]
    placed = {node.node_id: node for node in layout.nodes}  # a link names its ends by id
    contexts = contexts or {}

    def contexts_of(node: dict) -> list[str]:
        if _kind(node) != "feature":
            return []
        return [str(c) for c in contexts.get(feature_key(node)) or node.get("top_contexts") or []][:10]

    nodes_svg = "".join(_node_svg(n, sources[n.index], contexts_of(sources[n.index])) for n in layout.nodes)
    tokens = [str(t) for t in graph.get("metadata", {}).get("prompt_tokens", [])]
    axis = [
        f'<text class="token" x="{(left + right) / 2:.1f}" y="{layout.height - 16:.1f}">'
        f"{html.escape(_short(tokens[k]) if k < len(tokens) else str(k))}</text>"
        for k, (left, right) in enumerate(layout.columns)
    ]
    top = len(layout.rows) - 1
    names = ["Emb"] + [f"L{row - 1}" for row in range(1, top)] + ["Logits"]
    axis += [f'<text class="row" x="8" y="{y + 4:.1f}">{name}</text>' for name, y in zip(names, layout.rows)]
    title = html.escape(str(graph.get("metadata", {}).get("prompt", "") or "".join(tokens)))
    return (
        f'<div class="hf-graph" data-nodes="{len(layout.nodes)}"><div class="hf-graph-title">{title}</div>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{layout.width:.0f}" height="{layout.height:.0f}">'
        f'<g class="links">{_links_svg(graph, placed)}</g><g class="nodes">{nodes_svg}</g>'
        f'<g class="axis">{"".join(axis)}</g></svg><div class="hf-graph-tip" hidden></div></div>'
    )


def _template() -> str:
    return resources.files("hf_sae").joinpath(TEMPLATE).read_text(encoding="utf-8")


def graph_head() -> str:
    """The style and script that make `graph_svg`'s fragments interactive, for a page's <head> (the explorer's)."""
    template = _template()
    return template[template.index(HEAD_START) + len(HEAD_START) : template.index(HEAD_END)]


def write_graph_page(graph: Mapping, path: str | Path, *, contexts: Mapping[str, Sequence[str]] | None = None) -> Path:
    r"""
    Write `graph` (circuit-tracer's graph JSON, as a dict) as one self-contained HTML file at `path`, atomically.
    See `graph_svg` for `contexts`.

    Example:

    ```python
    >>> write_graph_page(graph_json(graph, "capital"), "graphs/capital.html")
    PosixPath('graphs/capital.html')
    ```
    """
    path = Path(path)
    if path.is_dir():
        raise ArgumentError(f"Expected a file name for the graph page (e.g. graph.html); {path} is a folder.")
    fragment = graph_svg(graph, contexts)
    slug = graph.get("metadata", {}).get("slug") or path.stem
    page = _template().replace(TITLE_MARKER, html.escape(f"{slug}: attribution graph"), 1)
    write_text(path, page.replace(SVG_MARKER, fragment, 1))
    return path


def edited_logits_html(graph: Mapping, rows: Sequence) -> str:
    """`GraphInterventions.top_logits`' rows (each token's logit with the edits and without) beside the graph's own
    prediction, as HTML tables; each row carries its numbers unrounded in `data-` attributes."""
    body = "".join(
        f'<tr class="edited-logit" data-token-id="{r.token_id}" data-logit="{r.logit!r}" '
        f'data-base-logit="{r.base_logit!r}"><td><code>{html.escape(repr(r.token))}</code></td><td>{r.logit:.4g}</td>'
        f"<td>{r.logit - r.base_logit:+.4g}</td><td>{r.probability:.3f}</td><td>{r.base_probability:.3f}</td></tr>"
        for r in rows
    )
    predicted = "".join(
        f'<tr class="graph-logit"><td>{html.escape(str(n.get("clerp") or n.get("node_id")))}</td></tr>'
        for n in _nodes_of(graph)
        if _kind(n) == "logit"
    )
    return (
        '<div style="display:flex;gap:32px;flex-wrap:wrap"><table id="edited-logits"><tr><th>token</th><th>logit</th>'
        f'<th>change</th><th>p</th><th>p before</th></tr>{body}</table><table id="graph-logits"><tr><th>the graph\'s '
        f"prediction</th></tr>{predicted}</table></div>"
    )
