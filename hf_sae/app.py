"""An interactive feature explorer, as a Gradio app (what Hub Spaces run): `hf-sae app --sae DIR_OR_REPO`.

Three tabs over one SAE, its feature metadata and its LM:

    Features   the feature list (search, sort) and a feature's page: statistics, histograms, logit effects, decoder
               neighbours, top contexts and contexts by activation quantile, explanations and scores where the
               metadata has them
    Prompt     a text's tokens, each with its most active features and their labels (`features.explain`)
    Steer      features clamped or added at chosen strengths (`SaeHooks.steer`), the greedy continuation beside the
               unsteered one
    Graph      an attribution graph from its JSON (`graph_page`), and with the LM's transcoders its feature nodes
               switched off or scaled (`graph_interventions`), the new top logits beside the graph's prediction

`write_space` writes the same app as a Hub Space folder (app.py, requirements.txt, README.md with `sdk: gradio`);
`push_space` (`hf-sae push --space SPACE_ID`) uploads it.
Gradio is an optional dependency: `pip install 'hf-sae[app]'`.
"""

import functools
import html
import math
import numbers
import os
import re
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .arguments import LanguageModelArguments
from .attribution import read_graph_json
from .autointerp import explanations_of
from .errors import ArgumentError, FeatureMetadataError, HfSaeError
from .feature_store import FeatureMetadata
from .features import explain, hookpoint_of, show_token
from .graph_interventions import GraphInterventions
from .graph_page import edited_logits_html, graph_head, graph_svg
from .hooks import SaeHooks
from .hub_client import push_errors
from .layout import probe_writable
from .modeling_sae import SaeModel
from .models import load_saes_and_lm, max_positions
from .version import __version__

LIST_COLUMNS = ["feature", "label", "frequency", "max_activation", "robust_peak"]
SORTS = {"feature id": "feature", "frequency": "frequency", "max activation": "max_activation"}
SORTS["robust peak"] = "robust_peak"
EXPLANATION_KEYS = re.compile(r"explanation|score|detection|fuzzing")  # what an explainer may add per feature
MAX_STRENGTH, MAX_NEW_TOKENS, MAX_TOP = 1e4, 200, 10  # far beyond any activation, yet no overflow even in float16


def _require_gradio():
    try:
        import gradio
    except ImportError:
        raise ArgumentError(
            "The explorer needs Gradio: pip install 'hf-sae[app]' (or `pip install gradio`)."
        ) from None
    return gradio


def _num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def _note(value) -> str:
    return _num(value) if isinstance(value, float) else str(value)


def _tokens_html(tokens: list[str], activations: list[float], peak: int, scale: float) -> str:
    """A context as spans shaded by the feature's activation (0 to `scale`), the peak outlined."""
    spans = []
    for k, (token, act) in enumerate(zip(tokens, activations)):
        alpha = min(max(act / scale, 0.0), 1.0) if scale > 0 else 0.0
        outline = "outline:1.5px solid rgb(232,89,12);" if k == peak else ""
        text = html.escape(token.replace("\n", "⏎"))
        spans.append(
            f'<span class="tok" title="{act:.3g}" style="white-space:pre;{outline}'
            f'background:rgba(232,89,12,{alpha:.3f})">{text}</span>'
        )
    return "".join(spans)


def _contexts_html(examples: list[dict], scale: float, css_class: str) -> str:
    rows = [
        f'<div class="{css_class}"><code>{e["activation"]:.3g}</code> '
        f"<code>{_tokens_html(e['tokens'], e['activations'], e['peak'], scale)}</code></div>"
        for e in examples
    ]
    return "".join(rows) or "<p>No contexts: it never fired.</p>"


def _bars_html(counts: list[int], low: float, high: float, title: str, css_class: str) -> str:
    """A histogram as a row of inline SVG bars, from `low` to `high`."""
    if not counts or not any(counts):
        return ""
    width, height, peak = 360, 90, max(counts)
    step = width / len(counts)
    bars = "".join(
        f'<rect class="{css_class}" x="{b * step:.1f}" y="{height - height * c / peak:.1f}" '
        f'width="{max(step - 1, 1):.1f}" height="{height * c / peak:.1f}" fill="rgb(232,89,12)"></rect>'
        for b, c in enumerate(counts)
    )
    return (
        f"<div><b>{html.escape(title)}</b><br><svg width='{width}' height='{height}'>{bars}</svg>"
        f"<br><small>{_num(low)} … {_num(high)}</small></div>"
    )


class Explorer:
    """What the app shows, as plain methods (each returns what one Gradio output takes), over one SAE, its feature
    metadata and its LM."""

    def __init__(self, model: nn.Module, tokenizer, sae: SaeModel, features: FeatureMetadata, hookpoint=None):
        self.model, self.tokenizer, self.sae, self.features = model, tokenizer, sae, features
        self.hookpoint = hookpoint_of(sae, hookpoint)
        self.hooks = SaeHooks(model, {self.hookpoint: sae})
        self.table = features.stats
        explanations_of(features)  # a damaged explanations.json: one clear error now, not a broken page later
        self.context = max_positions(model)  # the longest text the model reads, new tokens included
        # One model serves every user: a request's hooks would act inside another's forward, so one runs at a time.
        self._model_lock = threading.Lock()

    def feature_list(self, query: str = "", sort: str = "feature id", limit: int = 200):
        """The features whose id (`#12`), label or top tokens match every word of `query`, sorted by `sort`."""
        frame = self.table.reindex(columns=LIST_COLUMNS).copy()
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
        if key != "feature":
            frame = frame.sort_values(key, ascending=False, na_position="last", kind="stable")
        return frame.head(limit).round(4)

    def feature_page(self, index) -> str:
        """One feature's page as HTML."""
        try:
            feature = self.features[int(index)]
        except (TypeError, ValueError, IndexError):
            return f"<p>No feature {html.escape(str(index))}: pick one of 0 to {len(self.features) - 1}.</p>"
        s, scale = feature.stats, feature.stats.get("max_activation") or 0.0
        names = ["frequency", "mean_activation", "max_activation", "robust_peak"]
        names += [k for k in s if re.fullmatch(r"p[\d.]+", k)]
        stats = " · ".join(f"{k.replace('_activation', '')} <b>{_num(s.get(k))}</b>" for k in names if k in s)
        explained = getattr(feature, "explanation", None)  # an explainer's dict, where the metadata has one
        explained = explained if isinstance(explained, dict) else {}
        notes = "".join(
            f'<p class="explanation"><b>{html.escape(k.replace("_", " "))}</b>: {html.escape(_note(v))}</p>'
            for k, v in {**s, **explained}.items()
            if EXPLANATION_KEYS.search(k) and v not in (None, "", [], {}) and v == v  # v == v: not NaN
        )
        edges = self.features.metadata.get("histogram_edges") or [1e-4, 1e4]
        hist = s.get("histogram") or []
        occupied = [b for b, c in enumerate(hist) if c]
        panels = []
        if occupied:
            lo, hi = occupied[0], occupied[-1] + 1
            panels.append(_bars_html(hist[lo:hi], edges[lo], edges[hi], "Activation histogram (log)", "act-bar"))
        if "logit_histogram" in s:
            low, high = s["logit_range"]
            panels.append(_bars_html(s["logit_histogram"], low, high, "Logit effect over the vocabulary", "logit-bar"))
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
            + _contexts_html([e for e in feature.quantile_examples if e["bin"] == b], scale, "sampled")
            for b in bins
        )
        return (
            f'<div id="feature-page"><h2>Feature {feature.index}</h2><p id="feature-label">'
            f"{html.escape(feature.label or '(no label)')}</p><p>{stats}</p>{notes}"
            f'<div style="display:flex;gap:24px;flex-wrap:wrap">{"".join(panels)}</div>'
            f'<div style="display:flex;gap:24px;flex-wrap:wrap"><table><tr><th colspan=2>Logit effects</th></tr>'
            f"{logits}</table><table><tr><th colspan=3>Nearest by decoder cosine</th></tr>{neighbours}</table></div>"
            f"<h3>Top contexts</h3>{_contexts_html(feature.examples, scale, 'top')}"
            f"<h3>Contexts by activation quantile</h3>{sampled or '<p>None stored.</p>'}</div>"
        )

    def prompt_features(self, text: str, top: int = 5) -> str:
        """Each token of `text` with its `top` most active features and their labels, as an HTML table."""
        if not (text or "").strip():
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
        strengths = self.parse_strengths(spec)
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


def _whole(value, low: int, high: int, what: str) -> int:
    """A count from the page (a slider, or anyone calling the app's API), checked."""
    if not isinstance(value, numbers.Real) or not low <= value <= high or value != int(value):
        raise ArgumentError(f"{what} must be a whole number from {low} to {high}; got {value!r}.")
    return int(value)


class GraphExplorer:
    """The graph tab: attribution graphs read from their JSON and, given the LM's per-layer transcoders
    (`GraphInterventions`), their feature nodes switched off or scaled."""

    def __init__(self, interventions: GraphInterventions | None = None, path: str | os.PathLike | None = None):
        self.interventions, self.path = interventions, str(path or "")

    def load(self, path: str) -> tuple[dict, str]:
        """(the graph, its view) from a graph JSON file, as `write_graph_json` or circuit-tracer writes it."""
        path = Path((path or "").strip())
        if not path.is_file():
            raise ArgumentError(f"Expected the path of a graph JSON file (`hf-sae attribute` writes them); got "
                                f"{str(path)!r}, which is no file.")  # fmt: skip
        graph = read_graph_json(path)
        return graph, graph_svg(graph)

    def intervene(self, graph: dict | None, spec: str, top: int = 10) -> str:
        """The `top` next tokens with the nodes of `spec` edited beside the graph's own prediction, as HTML."""
        if not graph:
            raise ArgumentError("Load a graph first: type its JSON file's path and press Load.")
        if self.interventions is None:
            raise ArgumentError("Editing nodes needs the graph's LM and its per-layer transcoders; this app has none.")
        rows = self.interventions.top_logits(graph, spec, _whole(top, 1, MAX_TOP, "Logits shown"))
        return edited_logits_html(graph, rows)


def _graph_tab(gr, graphs: GraphExplorer, safely) -> None:
    """The Graph tab's components and events, inside the app's Blocks."""
    with gr.Tab("Graph"):
        with gr.Row():
            path = gr.Textbox(label="Graph JSON file", value=graphs.path, elem_id="graph-path", scale=4)
            load = gr.Button("Load", elem_id="graph-load", scale=1)
        graph = gr.State(None)
        view = gr.HTML(head=graph_head(), elem_id="graph-html")
        spec = gr.Textbox(label="Feature nodes: layer_feature_pos[:scale], ... (a node alone is switched off)",
                          elem_id="graph-nodes")  # fmt: skip
        run = gr.Button("Run the model with these edits", elem_id="graph-go")
        logits = gr.HTML(elem_id="graph-logits-html")
        load.click(safely(graphs.load), path, [graph, view])
        path.submit(safely(graphs.load), path, [graph, view])
        run.click(safely(graphs.intervene), [graph, spec], logits)


def _explorer_tabs(gr, explorer: Explorer, safely) -> None:
    """The Features, Prompt and Steer tabs' components and events, inside the app's Blocks."""
    limit = f" (at most {explorer.context:,} tokens: the model's context)" if explorer.context else ""
    with gr.Tab("Features"):
        with gr.Row():
            query = gr.Textbox(label="Search labels, tokens or #id", elem_id="search")
            sort = gr.Dropdown(list(SORTS), value="feature id", label="Sort by", elem_id="sort")
        table = gr.Dataframe(explorer.feature_list(), interactive=False, elem_id="feature-list", max_height=320)
        index = gr.Number(value=0, precision=0, label="Feature", elem_id="feature-index")
        page = gr.HTML(explorer.feature_page(0), elem_id="feature-html")
        query.change(explorer.feature_list, [query, sort], table)
        sort.change(explorer.feature_list, [query, sort], table)
        index.change(explorer.feature_page, index, page)

        def pick(frame, event: gr.SelectData):
            row = event.index[0] if isinstance(event.index, list | tuple) else event.index
            return int(frame.iloc[row]["feature"])

        table.select(pick, table, index)
    with gr.Tab("Prompt"):
        text = gr.Textbox(label=f"Text{limit}", elem_id="prompt-text", value="The Eiffel Tower is in Paris.")
        top = gr.Slider(1, MAX_TOP, value=5, step=1, label="Features per token")
        go = gr.Button("Show features", elem_id="prompt-go")
        found = gr.HTML(elem_id="prompt-html")
        go.click(safely(explorer.prompt_features), [text, top], found)
        text.submit(safely(explorer.prompt_features), [text, top], found)
    with gr.Tab("Steer"):
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
        run.click(safely(explorer.steer), [prompt, spec, mode, length], [plain, steered])


def build_app(explorer: Explorer | None, title: str | None = None, *, graphs: GraphExplorer | None = None):
    """The Gradio Blocks app over `explorer` (an SAE's features) and `graphs` (attribution graphs), either or both;
    `.launch()` it, or let a Space run it."""
    gr = _require_gradio()

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


SPACE_APP = '''"""The hf_sae feature explorer for {repo_id}, as a Hub Space (written by `hf-sae app --write_space`)."""

from hf_sae.app import build_app, load_explorer

build_app(load_explorer({repo_id!r}, hookpoint={hookpoint!r})).launch()
'''

SPACE_README = """---
title: {title}
emoji: 🔬
colorFrom: yellow
colorTo: red
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
models:
{models}
---

# {title}

The hf_sae feature explorer for [{repo_id}](https://huggingface.co/{repo_id}): the feature list with search and
sort, each feature's statistics, contexts and logit effects, the features of a typed prompt, and a steering
playground. The `hf_sae` folder is the package itself, so the Space needs nothing that is not on PyPI.
"""


def write_space(output_dir: str | os.PathLike, repo_id: str, *, hookpoint: str | None = None, base_model=None) -> Path:
    """Write a Hub Space folder that runs the explorer on the SAE repo `repo_id`: app.py, requirements.txt,
    README.md (Space front matter, `sdk: gradio`) and a copy of the hf_sae package. Push it with
    `huggingface-cli upload --repo-type space SPACE_ID OUTPUT_DIR` (or `HfApi.upload_folder`)."""
    gr = _require_gradio()
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        there = "holds files" if output_dir.is_dir() else "is a file"
        raise ArgumentError(f"Expected a new or empty folder for the Space; {output_dir} {there}. Choose another.")
    probe_writable(output_dir, "write_space")  # a parent that is a file, or no permission: one clear line
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "app.py").write_text(SPACE_APP.format(repo_id=repo_id, hookpoint=hookpoint))
    requirements = _requirements() + [f"gradio=={gr.__version__}"]
    (output_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
    models = "".join(f"  - {m}\n" for m in (repo_id, base_model) if m).rstrip("\n")
    title = f"{repo_id.split('/')[-1]} explorer"
    readme = SPACE_README.format(title=title, gradio_version=gr.__version__, models=models, repo_id=repo_id)
    (output_dir / "README.md").write_text(readme)
    package = Path(resources.files("hf_sae"))
    shutil.copytree(package, output_dir / "hf_sae", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return output_dir


def push_space(
    space_id: str,
    repo_id: str,
    *,
    hookpoint: str | None = None,
    base_model: str | None = None,
    token: str | None = None,
    private: bool = False,
):
    """Create (if needed) the Gradio Space `space_id` and upload `write_space`'s folder for the SAE repo `repo_id`
    to it in one commit. Returns the `CommitInfo`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    intact = (f"Nothing of the Space was uploaded, and the SAE repo {repo_id} is as this step found it (SAEs pushed "
              f"before it are there). Check that the token can write to {space_id}, then push the Space again "
              f"(`hf-sae push ... --space {space_id}`, or `hf-sae app --write_space DIR` and `hf upload --repo-type "
              f"space {space_id} DIR`).")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hf-sae-space-") as tmp:
        folder = write_space(Path(tmp) / "space", repo_id, hookpoint=hookpoint, base_model=base_model)
        with push_errors(f"Pushing the Space {space_id!r}", intact):
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            message = f"Feature explorer for {repo_id}"
            return api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder, commit_message=message)


def _requirements() -> list[str]:
    """hf_sae's own dependencies, as installed (the Space installs them from PyPI)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        listed = requires("hf-sae") or []
    except PackageNotFoundError:  # running from a source tree without an install
        listed = []
    return [r for r in listed if "extra ==" not in r]
