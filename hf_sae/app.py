"""An interactive feature explorer, as a Gradio app (what Hub Spaces run): `hf-sae app --sae DIR_OR_REPO`.

Tabs over one SAE, its feature metadata and its LM, and over attribution graphs:

    Features   the feature list (search, sort) and a feature's page: statistics, histograms, logit effects, decoder
               neighbours, top contexts and contexts by activation quantile, explanations and scores where the
               metadata has them
    Prompt     a text's tokens, each with its most active features and their labels (`features.explain`)
    Steer      features clamped or added at chosen strengths (`SaeHooks.steer`), the greedy continuation beside the
               unsteered one
    Graph      an attribution graph from its JSON or traced for a prompt (`graph_page`), its feature nodes switched
               off or scaled (`graph_interventions`), the new top logits beside the graph's prediction

`write_space` and `push_space` (module `space`, re-exported here) make it a Hub Space.
Gradio is an optional dependency: `pip install 'hf-sae[app]'`.
"""

import functools
import html
import math
import numbers
import os
import re
import threading
from pathlib import Path

import torch
from torch import nn

from .arguments import LanguageModelArguments
from .attribution import attribute, graph_json, read_graph_json
from .attribution.graph_json import GRAPH_METADATA
from .autointerp import explanations_of
from .circuit_runners import check_transcoders_fit_model
from .errors import ArgumentError, FeatureMetadataError, HfSaeError
from .feature_html import bars_html, contexts_html, note_text, number_text
from .feature_store import FeatureMetadata
from .features import explain, hookpoint_of, show_token
from .graph_interventions import GraphInterventions
from .graph_page import edited_logits_html, graph_head, graph_svg
from .hooks import SaeHooks
from .hub import load_transcoders
from .latent_search import find_latents
from .modeling_sae import SaeModel
from .models import load_model, load_saes_and_lm, max_positions
from .precision import default_device
from .space import push_space, require_gradio, write_space
from .version import __version__

LIST_COLUMNS = ["feature", "label", "interpretability", "dense", "frequency", "max_activation", "robust_peak"]
SORTS = {"interpretability": "interpretability", "feature id": "feature", "frequency": "frequency"}
SORTS |= {"max activation": "max_activation", "robust peak": "robust_peak"}
EXPLANATION_KEYS = re.compile(r"explanation|score|detection|fuzzing")  # what an explainer may add per feature
MAX_STRENGTH, MAX_NEW_TOKENS, MAX_TOP = 1e4, 200, 10  # far beyond any activation, yet no overflow even in float16
MAX_TRACED = 64  # tokens of a prompt traced in the app: a graph's cost grows with its active features


class Explorer:
    """What the app shows, as plain methods (each returns what one Gradio output takes), over one SAE, its feature
    metadata and its LM."""

    def __init__(self, model: nn.Module, tokenizer, sae: SaeModel, features: FeatureMetadata, hookpoint=None):
        self.model, self.tokenizer, self.sae, self.features = model, tokenizer, sae, features
        self.hookpoint = hookpoint_of(sae, hookpoint)
        self.hooks = SaeHooks(model, {self.hookpoint: sae}, tokenizer=tokenizer)
        self.table = features.stats
        explanations_of(features)  # a damaged explanations.json: one clear error now, not a broken page later
        self.context = max_positions(model)  # the longest text the model reads, new tokens included
        # One model serves every user: a request's hooks would act inside another's forward, so one runs at a time.
        self._model_lock = threading.Lock()

    def feature_list(self, query: str = "", sort: str = "interpretability", limit: int = 200):
        """The features whose id (`#12`), label or top tokens match every word of `query`, sorted by `sort` (by
        interpretability score, best first, by default; metadata without it by id)."""
        query, sort = _text(query, "The search"), _text(sort, "The sort")
        frame = self.table.reindex(columns=[c for c in LIST_COLUMNS if c in self.table or c in ("feature", "label")])
        frame = frame.copy()
        frame["label"] = [self.features.label(i) for i in range(len(frame))]
        terms = (query or "").lower().split()
        if terms:
            tokens = self.table.get("promoted_tokens")
            haystack = [
                f"#{i} {label} {' '.join(tokens[i][:5]) if tokens is not None else ''}".lower()
                for i, label in enumerate(frame["label"])
            ]
            frame = frame[[all(t in h for t in terms) for h in haystack]]
        key = SORTS.get(sort, "feature")
        if key != "feature" and key in frame:
            frame = frame.sort_values(key, ascending=False, na_position="last", kind="stable")
        return frame.head(limit).round(4)

    def feature_page(self, index) -> str:
        """One feature's page as HTML."""
        try:
            feature = self.features[int(index)]
        except (TypeError, ValueError, IndexError):
            return f"<p>No feature {html.escape(str(index))}: pick one of 0 to {len(self.features) - 1}.</p>"
        s, scale = feature.stats, feature.stats.get("max_activation") or 0.0
        names = ["interpretability", "consistency", "label_precision", "label_recall", "frequency"]
        names += ["mean_activation", "max_activation", "robust_peak"]
        names += [k for k in s if re.fullmatch(r"p[\d.]+", k)]
        stats = " · ".join(f"{k.replace('_activation', '')} <b>{number_text(s.get(k))}</b>" for k in names if k in s)
        explained = getattr(feature, "explanation", None)  # an explainer's dict, where the metadata has one
        explained = explained if isinstance(explained, dict) else {}
        notes = "".join(
            f'<p class="explanation"><b>{html.escape(k.replace("_", " "))}</b>: {html.escape(note_text(v))}</p>'
            for k, v in {**s, **explained}.items()
            if EXPLANATION_KEYS.search(k) and v not in (None, "", [], {}) and v == v  # v == v: not NaN
        )
        edges = self.features.metadata.get("histogram_edges") or [1e-4, 1e4]
        hist = s.get("histogram") or []
        occupied = [b for b, c in enumerate(hist) if c]
        panels = []
        if occupied:
            lo, hi = occupied[0], occupied[-1] + 1
            panels.append(bars_html(hist[lo:hi], edges[lo], edges[hi], "Activation histogram (log)", "act-bar"))
        if "logit_histogram" in s:
            low, high = s["logit_range"]
            panels.append(bars_html(s["logit_histogram"], low, high, "Logit effect over the vocabulary", "logit-bar"))
        logits = "".join(
            f"<tr><td>{html.escape(show_token(t))}</td><td>{v:+.3g}</td></tr>"
            for kind in ("promoted", "suppressed")
            for t, v in zip(s.get(f"{kind}_tokens", []), s.get(f"{kind}_logits", []))
        )
        neighbours = "".join(
            f'<tr class="neighbour"><td>#{j}</td><td>{html.escape(self.features.label(j))}</td><td>{c:.3f}</td></tr>'
            for j, c in zip(s.get("neighbour_ids", []), s.get("neighbour_cosines", []))
        )
        bins = sorted({e["bin"] for e in feature.quantile_examples}, reverse=True)
        sampled = "".join(
            f"<h4>Decile {b + 1}</h4>"
            + contexts_html([e for e in feature.quantile_examples if e["bin"] == b], scale, "sampled")
            for b in bins
        )
        return (
            f'<div id="feature-page"><h2>Feature {feature.index}</h2><p id="feature-label">'
            f"{html.escape(feature.label or '(no label)')}</p>{_dense_mark(s)}<p>{stats}</p>{notes}{self._about()}"
            f'<div style="display:flex;gap:24px;flex-wrap:wrap">{"".join(panels)}</div>'
            f'<div style="display:flex;gap:24px;flex-wrap:wrap"><table><tr><th colspan=2>Logit effects</th></tr>'
            f"{logits}</table><table><tr><th colspan=3>Nearest by decoder cosine</th></tr>{neighbours}</table></div>"
            f"<h3>Top contexts</h3>{contexts_html(feature.examples, scale, 'top')}"
            f"<h3>Contexts by activation quantile</h3>{sampled or '<p>None stored.</p>'}</div>"
        )

    def _about(self) -> str:
        """What the statistics describe and how far to trust the labels, as the metadata records it."""
        rule = self.features.metadata.get("interpretability") or {}
        note = self.features.text_note
        about = [f"Statistics of the {html.escape(note)}." if note else ""]
        if rule:
            about.append(
                f"Interpretability: {html.escape(rule['formula'])}; below {rule['threshold']:g} a label reads "
                f'"no clear pattern". Dense: firing on more than {rule["dense_threshold"]:.0%} of tokens.'
            )
        return f'<p class="about"><small>{" ".join(about)}</small></p>' if any(about) else ""

    def find_latents(self, positives: str, negatives: str, include_dense: bool = False) -> str:
        """The latents that fire on the `positives` (one text a line) and not on the `negatives`, as an HTML table;
        dense latents only with `include_dense`."""
        lines = lambda text, what: [t for t in _text(text, what).splitlines() if t.strip()]  # noqa: E731
        positives, negatives = lines(positives, "The positive texts"), lines(negatives, "The negative texts")
        for text in positives + negatives:
            self._check_length(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1, "A text")
        if not isinstance(include_dense, bool):
            raise ArgumentError(f"Include dense latents must be true or false; got {include_dense!r}.")
        with self._model_lock:
            found = find_latents(self.model, self.tokenizer, self.sae, positives, negatives, hookpoint=self.hookpoint,
                                 include_dense=include_dense, features=self.features)  # fmt: skip
        rows = "".join(
            f'<tr class="found"><td>#{f["feature"]}{_dense_mark(f)}</td><td>{html.escape(f["label"])}</td>'
            f"<td>{number_text(f['contrast'])}</td><td>{number_text(f['positive'])}</td><td>{number_text(f['negative'])}</td>"
            f"<td>{number_text(f['interpretability'])}</td></tr>"
            for f in found
        )
        left_out = "" if include_dense else "<p><small>Dense latents are left out.</small></p>"
        if not found:
            return f"<p>No latent fires more on the positive texts than on the negative ones.</p>{left_out}"
        head = (
            "<tr><th>feature</th><th>label</th><th>contrast</th><th>positive</th><th>negative</th><th>score</th></tr>"
        )
        return f'<table id="found-table">{head}{rows}</table>{left_out}'

    def prompt_features(self, text: str, top: int = 5) -> str:
        """Each token of `text` with its `top` most active features and their labels, as an HTML table."""
        if not _text(text, "The text").strip():
            return "<p>Type a text.</p>"
        top = _whole(top, 1, MAX_TOP, "Features per token")
        self._check_length(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1, "The text")
        with self._model_lock:
            rows = explain(
                self.model, self.tokenizer, self.sae, text, top, hookpoint=self.hookpoint, features=self.features
            )
        body = "".join(
            f'<tr class="prompt-token"><td><code>{html.escape(repr(row["token"]))}</code></td><td>'
            + ", ".join(
                f'<span class="prompt-feature" data-feature="{f["feature"]}">#{f["feature"]} '
                f"({f['activation']:.3g}) {html.escape(f['label'])}</span>"
                for f in row["features"]
            )
            + "</td></tr>"
            for row in rows
        )
        return f'<table id="prompt-table"><tr><th>token</th><th>top features</th></tr>{body}</table>'

    def parse_strengths(self, spec: str) -> dict[int, float]:
        """`"12:40, 7"` -> {12: 40.0, 7: 2 x robust peak of 7}: a feature alone gets twice its robust peak."""
        strengths = {}
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            name, _, value = part.partition(":")
            try:
                index, amount = int(name.strip().lstrip("#")), float(value) if value.strip() else None
            except ValueError:
                raise ArgumentError(
                    f"Expected features as `id:strength, id, ...`; got {part!r} in {spec!r}."
                ) from None
            if not 0 <= index < self.sae.config.num_latents:
                raise ArgumentError(f"Feature {index} is not in [0, {self.sae.config.num_latents}).")
            strengths[index] = 2 * self._peak(index) if amount is None else amount
            if not abs(strengths[index]) <= MAX_STRENGTH:  # NaN fails this too
                raise ArgumentError(
                    f"The strength of feature {index} must be a number from {-MAX_STRENGTH:g} to {MAX_STRENGTH:g} "
                    f"(its robust peak is {self._peak(index):.3g}); got {strengths[index]:g}."
                )
        if not strengths:
            raise ArgumentError("Name at least one feature to steer, e.g. `12:40` or `12` (twice its robust peak).")
        return strengths

    def _peak(self, index: int) -> float:
        stats = self.features[index].stats
        peak = stats.get("robust_peak", stats.get("max_activation"))
        return float(peak) if peak is not None and math.isfinite(peak) else 1.0

    @torch.no_grad()
    def steer(self, prompt: str, spec: str, mode: str = "clamp", max_new_tokens: int = 30) -> tuple[str, str]:
        """(unsteered, steered) greedy continuations of `prompt`, steering the features of `spec` with `mode`."""
        prompt, strengths = _text(prompt, "The prompt"), self.parse_strengths(_text(spec, "The features"))
        if mode not in ("clamp", "add"):
            raise ArgumentError(f"The mode must be clamp or add; got {mode!r}.")
        settings = {"max_new_tokens": _whole(max_new_tokens, 1, MAX_NEW_TOKENS, "New tokens"), "do_sample": False}
        settings["pad_token_id"] = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        inputs = self.tokenizer([prompt or ""], return_tensors="pt").to(self.model.device)
        prompt_length = inputs["input_ids"].shape[1]
        self._check_length(prompt_length + settings["max_new_tokens"], "The prompt with its new tokens")

        def generate() -> str:
            out = self.model.generate(**inputs, **settings)[0, prompt_length:]
            return self.tokenizer.decode(out, skip_special_tokens=True)

        with self._model_lock:
            plain = generate()
            with self.hooks.steer(strengths, mode=mode, hookpoint=self.hookpoint):
                steered = generate()
        return plain, steered

    def _check_length(self, tokens: int, what: str) -> None:
        if self.context is not None and tokens > self.context:
            raise ArgumentError(
                f"{what} makes {tokens:,} tokens; the model reads at most {self.context:,} (its context). Shorten it."
            )


def _text(value, what: str) -> str:
    """A text from the page (or anyone calling the app's API), checked; None reads as empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ArgumentError(f"{what} must be a text; got {type(value).__name__} {str(value)[:80]!r}.")
    return value


def _dense_mark(stats: dict) -> str:
    return ' <span class="dense" title="fires on more than 1% of tokens">dense</span>' if stats.get("dense") else ""


def _whole(value, low: int, high: int, what: str) -> int:
    """A count from the page (a slider, or anyone calling the app's API), checked."""
    if not isinstance(value, numbers.Real) or not low <= value <= high or value != int(value):
        raise ArgumentError(f"{what} must be a whole number from {low} to {high}; got {value!r}.")
    return int(value)


class GraphExplorer:
    """The graph tab: the attribution graphs of one folder (`<slug>.json`, as `write_graph_json` and circuit-tracer
    write them) and, given the LM's per-layer transcoders (`GraphInterventions`), graphs traced for a typed prompt and
    their feature nodes switched off or scaled. Only the folder's graphs can be opened: no path is typed in."""

    def __init__(self, interventions: GraphInterventions | None = None, graphs: str | os.PathLike | None = None):
        graphs = Path(graphs) if graphs else None
        self.interventions, self.selected = interventions, graphs.stem if graphs and graphs.is_file() else None
        self.folder = graphs.parent if graphs and graphs.is_file() else graphs
        if self.folder is not None and not self.folder.is_dir():
            raise ArgumentError(f"Expected a graph JSON file or a folder of them; {graphs} is neither.")
        if interventions is None and self.folder is None:
            raise ArgumentError("The graph tab needs graphs to show (a folder or file) or transcoders to trace with.")

    def slugs(self) -> list[str]:
        files = self.folder.glob("*.json") if self.folder else []
        return sorted(p.stem for p in files if p.name != GRAPH_METADATA)

    def load(self, slug: str) -> tuple[dict, str]:
        """(the graph, its view) of `<folder>/<slug>.json`."""
        if slug not in self.slugs():
            raise ArgumentError(f"No graph {slug!r} in {self.folder}; pick one of {self.slugs()}.")
        graph = read_graph_json(self.folder / f"{slug}.json")
        return graph, graph_svg(graph)

    def trace(self, prompt: str) -> tuple[dict, str]:
        """(the graph, its view) of `prompt`, traced through the transcoders (`attribution.attribute`)."""
        lab = self._lab()
        if not (prompt or "").strip():
            raise ArgumentError("Type a prompt to trace.")
        if (length := len(lab.tokenizer(prompt)["input_ids"])) > MAX_TRACED:
            raise ArgumentError(f"The prompt makes {length} tokens; the explorer traces at most {MAX_TRACED}. Shorten "
                                "it, or trace it with `hf-sae attribute`.")  # fmt: skip
        with lab.lock:
            graph = graph_json(attribute(lab.model, lab.tokenizer, lab.transcoders, prompt), "explorer")
        return graph, graph_svg(graph)

    def intervene(self, graph: dict | None, spec: str, top: int = 10) -> str:
        """The `top` next tokens with the nodes of `spec` edited beside the graph's own prediction, as HTML."""
        if not graph:
            raise ArgumentError("Open or trace a graph first.")
        rows = self._lab().top_logits(graph, spec, _whole(top, 1, MAX_TOP, "Logits shown"))
        return edited_logits_html(graph, rows)

    def _lab(self) -> GraphInterventions:
        if self.interventions is None:
            raise ArgumentError("Tracing and editing need the graph's LM and its per-layer transcoders; none given.")
        return self.interventions


def _graph_tab(gr, graphs: GraphExplorer, safely) -> None:
    """The Graph tab's components and events, inside the app's Blocks."""
    with gr.Tab("Graph"):
        graph = gr.State(None)
        with gr.Row():
            slug = gr.Dropdown(graphs.slugs(), value=graphs.selected, label=f"Graphs in {graphs.folder}",
                               elem_id="graph-slug", scale=3)  # fmt: skip
            load = gr.Button("Open", elem_id="graph-load", scale=1)
        with gr.Row(visible=graphs.interventions is not None):
            prompt = gr.Textbox(label=f"Or trace a prompt (at most {MAX_TRACED} tokens)", elem_id="graph-prompt",
                                scale=3)  # fmt: skip
            trace = gr.Button("Trace", elem_id="graph-trace", scale=1)
        view = gr.HTML(head=graph_head(), elem_id="graph-html")
        spec = gr.Textbox(label="Feature nodes: layer_feature_pos[:scale], ... (a node alone is switched off)",
                          elem_id="graph-nodes")  # fmt: skip
        run = gr.Button("Run the model with these edits", elem_id="graph-go")
        logits = gr.HTML(elem_id="graph-logits-html")
        load.click(safely(graphs.load), slug, [graph, view])
        trace.click(safely(graphs.trace), prompt, [graph, view])
        run.click(safely(graphs.intervene), [graph, spec], logits)


def load_graph_explorer(graphs=None, transcoders: str | None = None, model: str | None = None, device=None):
    """A `GraphExplorer` over a graph JSON file or a folder of them and, with `transcoders` (a folder or Hub repo of
    per-layer transcoders), their LM (`model`, by default the built-in one) to trace and edit graphs with."""
    if transcoders is None:
        return GraphExplorer(None, graphs)
    loaded = load_transcoders(transcoders)  # a missing folder or an unknown format fails before the LM loads
    check_transcoders_fit_model(loaded, model)
    lm, tokenizer = load_model(model, device=device or default_device())
    lm.requires_grad_(False)
    on_device = {layer: sae.to(lm.device) for layer, sae in loaded.items()} if isinstance(loaded, dict) else loaded
    return GraphExplorer(GraphInterventions(lm, tokenizer, on_device), graphs)


def _explorer_tabs(gr, explorer: Explorer, safely) -> None:
    """The Features, Prompt and Steer tabs' components and events, inside the app's Blocks."""
    limit = f" (at most {explorer.context:,} tokens: the model's context)" if explorer.context else ""
    with gr.Tab("Features"):
        with gr.Row():
            query = gr.Textbox(label="Search labels, tokens or #id", elem_id="search")
            sort = gr.Dropdown(list(SORTS), value="interpretability", label="Sort by", elem_id="sort")
        table = gr.Dataframe(explorer.feature_list(), interactive=False, elem_id="feature-list", max_height=320)
        index = gr.Number(value=0, precision=0, label="Feature", elem_id="feature-index")
        page = gr.HTML(explorer.feature_page(0), elem_id="feature-html")
        # Every value reaches the explorer as sent, which checks it and names a bad one: Gradio's own parsing of a
        # malformed API call would fail with a traceback in the server's log.
        query.change(safely(explorer.feature_list), [query, sort], table, preprocess=False)
        sort.change(safely(explorer.feature_list), [query, sort], table, preprocess=False)
        index.change(safely(explorer.feature_page), index, page, preprocess=False)

        def pick(frame, event: gr.SelectData):
            row = event.index[0] if isinstance(event.index, list | tuple) else event.index
            return int(frame.iloc[row]["feature"])

        table.select(pick, table, index)
    with gr.Tab("Prompt"):
        text = gr.Textbox(label=f"Text{limit}", elem_id="prompt-text", value="The Eiffel Tower is in Paris.")
        top = gr.Slider(1, MAX_TOP, value=5, step=1, label="Features per token")
        go = gr.Button("Show features", elem_id="prompt-go")
        found = gr.HTML(elem_id="prompt-html")
        go.click(safely(explorer.prompt_features), [text, top], found, preprocess=False)
        text.submit(safely(explorer.prompt_features), [text, top], found, preprocess=False)
    with gr.Tab("Steer"):
        with gr.Accordion("Find the latent for a concept", open=False):
            with gr.Row():
                positives = gr.Textbox(label="Texts of the concept, one a line", lines=3, elem_id="find-positives")
                negatives = gr.Textbox(label="Texts without it, one a line", lines=3, elem_id="find-negatives")
            dense = gr.Checkbox(False, label="Include dense latents (they rarely steer)", elem_id="find-dense")
            find = gr.Button("Find", elem_id="find-go")
            found_latents = gr.HTML(elem_id="find-html")
            find.click(safely(explorer.find_latents), [positives, negatives, dense], found_latents, preprocess=False)
        prompt = gr.Textbox(label=f"Prompt{limit}, new tokens included", value="The weather today is",
                            elem_id="steer-prompt")  # fmt: skip
        spec = gr.Textbox(
            label="Features: id:strength, ... (an id alone: twice its robust peak)", elem_id="steer-features"
        )
        with gr.Row():
            mode = gr.Radio(["clamp", "add"], value="clamp", label="Mode")
            length = gr.Slider(1, MAX_NEW_TOKENS, value=30, step=1, label="New tokens")
        run = gr.Button("Generate", elem_id="steer-go")
        with gr.Row():
            plain = gr.Textbox(label="Unsteered", elem_id="steer-plain", interactive=False)
            steered = gr.Textbox(label="Steered", elem_id="steer-steered", interactive=False)
        run.click(safely(explorer.steer), [prompt, spec, mode, length], [plain, steered], preprocess=False)


def build_app(explorer: Explorer | None, title: str | None = None, *, graphs: GraphExplorer | None = None):
    """The Gradio Blocks app over `explorer` (an SAE's features) and `graphs` (attribution graphs), either or both;
    `.launch()` it, or let a Space run it."""
    gr = require_gradio()

    def safely(function):  # a bad input shows as an error in the page, and not as a traceback in the server's log
        @functools.wraps(function)  # the API takes the method's name and parameters
        def run(*args):
            try:
                return function(*args)
            except HfSaeError as error:
                raise gr.Error(str(error), print_exception=False) from None

        return run

    if explorer is None and graphs is None:
        raise ArgumentError("The explorer shows an SAE's features, an attribution graph, or both; got neither.")
    title = title or (f"{explorer.hookpoint} features" if explorer else "Attribution graph")
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        count = f"{len(explorer.features):,} features · " if explorer else ""
        gr.Markdown(f"# {html.escape(title)}\n{count}hf-sae {__version__}")
        if explorer is not None:
            _explorer_tabs(gr, explorer, safely)
        if graphs is not None:
            _graph_tab(gr, graphs, safely)
    return app


def load_explorer(sae: str, lm_args=None, *, hookpoint: str | None = None, device: str | None = None) -> Explorer:
    """An `Explorer` for one SAE folder or Hub repo (one hookpoint of it) with its LM, by default its base model
    (the built-in SmolLM2 offline)."""
    saes, model, tokenizer = load_saes_and_lm(
        sae, [hookpoint] if hookpoint else None, lm_args or LanguageModelArguments(), device=device
    )
    if len(saes) != 1:
        raise ArgumentError(f"{sae} holds {len(saes)} SAEs ({list(saes)}); pick one with --hookpoint.")
    name, model_sae = next(iter(saes.items()))
    try:
        features = model_sae.features
    except (FeatureMetadataError, FileNotFoundError):
        raise FeatureMetadataError(
            f"{sae} has no feature metadata for {name}; collect it with `hf-sae features --sae {sae}` first."
        ) from None
    return Explorer(model, tokenizer, model_sae, features, name)


__all__ = [
    "Explorer", "GraphExplorer", "build_app", "load_explorer", "load_graph_explorer", "push_space", "write_space",
]  # fmt: skip
