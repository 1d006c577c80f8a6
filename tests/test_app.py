"""The Gradio feature explorer on a tiny LM and SAE, driven in real headless Chromium; and the Space it writes."""

import os
import socket
from pathlib import Path

import pytest
import torch
from test_browser import chrome, wait_for  # noqa: F401  (chrome: the headless Chromium fixture)
from test_features import collect, make_tiny_lm, tiny_sae, tiny_tokenizer, token_blocks
from test_hub import api, hub, hub_server  # noqa: F401  (the Hub-protocol server on 127.0.0.1)

from hf_sae.app import Explorer, write_space
from hf_sae.errors import ArgumentError
from hf_sae.features import explain

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry, no version check
gradio = pytest.importorskip("gradio", reason="needs Gradio: pip install -e '.[dev]'")

PROMPT = "w5 w6 w7 w8"


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    lm = make_tiny_lm("llama")
    tokenizer, sae = tiny_tokenizer(), tiny_sae(24, "relu")
    features = collect(lm.model, tokenizer, sae, token_blocks(num_blocks=16))
    features.set_label(5, "zebra crossing")
    return Explorer(lm.model, tokenizer, sae, features)


def plain_generate(explorer: Explorer, prompt: str, new_tokens: int) -> str:
    """Greedy continuation with no hooks at all: what the unsteered column must show."""
    inputs = explorer.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = explorer.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return explorer.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_steering_changes_the_text_and_leaves_the_unsteered_one_alone(explorer):
    plain, steered = explorer.steer(PROMPT, "3:30, 4", "clamp", 8)
    assert plain == plain_generate(explorer, PROMPT, 8) and steered != plain
    assert explorer.steer(PROMPT, "3:0", "add", 8) == (plain, plain)  # adding nothing changes nothing
    assert explorer.parse_strengths("#4") == {4: 2 * explorer.features[4].robust_peak}
    with pytest.raises(ArgumentError, match=r"id:strength.*'x:1'"):
        explorer.parse_strengths("x:1")
    with pytest.raises(ArgumentError, match=r"Feature 48 is not in \[0, 48\)"):
        explorer.parse_strengths("48:1")
    with pytest.raises(ArgumentError, match="at least one feature"):
        explorer.parse_strengths(" , ")


def test_feature_page_shows_explanations_and_scores_where_the_metadata_has_them(explorer):
    import pyarrow as pa

    from hf_sae.feature_store import FeatureMetadata

    f = explorer.features
    assert 'class="explanation"' not in explorer.feature_page(3)
    explanations = pa.array(["", "", "", "Names of <b>rivers</b>"] + [""] * 44)
    stats = f.stats_table.append_column("explanation", explanations)
    stats = stats.append_column("detection_score", pa.array([float("nan")] * 3 + [0.8125] + [None] * 44))
    with_notes = Explorer(explorer.model, explorer.tokenizer, explorer.sae, FeatureMetadata(
        stats, f.examples_table(), f.metadata, quantile_examples=f.quantile_examples_table()))  # fmt: skip
    page = with_notes.feature_page(3)
    assert "<b>explanation</b>: Names of &lt;b&gt;rivers&lt;/b&gt;" in page and "<b>detection score</b>: 0.812" in page
    assert 'class="explanation"' not in with_notes.feature_page(4)
    assert "No feature 99" in with_notes.feature_page(99) and "No feature x" in with_notes.feature_page("x")


def test_feature_list_searches_and_sorts(explorer):
    assert explorer.feature_list("zebra")["feature"].tolist() == [5]
    assert explorer.feature_list("#17")["feature"].tolist() == [17]
    by_peak = explorer.feature_list("", "robust peak")
    assert by_peak["feature"].iloc[0] == explorer.features.stats["robust_peak"].idxmax()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(explorer):
    from hf_sae.app import build_app

    app = build_app(explorer)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _text(chrome, selector: str) -> str:  # noqa: F811
    found = chrome.find_elements("css selector", selector)
    return found[0].text if found else ""


def _value(chrome, selector: str) -> str:  # noqa: F811
    found = chrome.find_elements("css selector", selector)
    return found[0].get_property("value") if found else ""


def _tab(chrome, name: str) -> None:  # noqa: F811
    tab = next(b for b in chrome.find_elements("css selector", "button[role=tab]") if b.text.strip() == name)
    tab.click()


def test_explorer_in_headless_chromium(chrome, served, explorer):  # noqa: F811
    chrome.get(served)
    wait_for(lambda: _text(chrome, "#feature-html h2") == "Feature 0", timeout=60)
    assert "Top contexts" in _text(chrome, "#feature-html")
    index = chrome.find_element("css selector", "#feature-index input")
    index.clear()
    index.send_keys("5\n")
    wait_for(lambda: _text(chrome, "#feature-html h2") == "Feature 5")
    assert _text(chrome, "#feature-label") == "zebra crossing"
    page = chrome.find_element("css selector", "#feature-html")
    assert len(page.find_elements("css selector", "div.top")) == len(explorer.features[5].examples) > 0
    assert len(page.find_elements("css selector", "div.sampled")) == len(explorer.features[5].quantile_examples)
    assert len(page.find_elements("css selector", "tr.neighbour")) == 10
    assert page.find_elements("css selector", "rect.logit-bar") and page.find_elements("css selector", "rect.act-bar")

    search = chrome.find_element("css selector", "#search textarea, #search input")
    search.send_keys("zebra")
    wait_for(
        lambda: "zebra crossing" in _text(chrome, "#feature-list") and "w82" not in _text(chrome, "#feature-list")
    )

    _tab(chrome, "Prompt")
    box = chrome.find_element("css selector", "#prompt-text textarea, #prompt-text input")
    box.clear()
    box.send_keys(PROMPT)
    chrome.find_element("css selector", "#prompt-go").click()
    wait_for(lambda: len(chrome.find_elements("css selector", "#prompt-html tr.prompt-token")) == 4)
    rows = explain(explorer.model, explorer.tokenizer, explorer.sae, PROMPT, 5, features=explorer.features)
    first = chrome.find_elements("css selector", "#prompt-html tr.prompt-token")[0]
    shown = [int(s.get_attribute("data-feature")) for s in first.find_elements("css selector", ".prompt-feature")]
    assert shown == [f["feature"] for f in rows[0]["features"]] and shown

    _tab(chrome, "Steer")
    prompt = chrome.find_element("css selector", "#steer-prompt textarea")
    prompt.clear()
    prompt.send_keys(PROMPT)
    chrome.find_element("css selector", "#steer-features textarea").send_keys("3:30, 4")
    chrome.find_element("css selector", "#steer-go").click()
    wait_for(lambda: _value(chrome, "#steer-plain textarea") and _value(chrome, "#steer-steered textarea"), 60)
    plain, steered = _value(chrome, "#steer-plain textarea"), _value(chrome, "#steer-steered textarea")
    assert plain == plain_generate(explorer, PROMPT, 30) and steered != plain
    chrome.save_screenshot(str(__import__("test_browser").ARTIFACTS / "app.png"))


def test_space_folder_runs_the_app_on_the_repo(tmp_path):
    folder = write_space(tmp_path / "space", "you/smollm2-saes", hookpoint="model.layers.15", base_model="HF/base")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "app.py", "hf_sae", "requirements.txt"]
    readme = (folder / "README.md").read_text()
    front = readme.split("---\n")[1]
    assert "sdk: gradio\n" in front and f"sdk_version: {gradio.__version__}\n" in front and "app_file: app.py" in front
    assert "  - you/smollm2-saes\n  - HF/base" in front
    app = (folder / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert "load_explorer('you/smollm2-saes', hookpoint='model.layers.15')" in app
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert f"gradio=={gradio.__version__}" in requirements and any(r.startswith("torch") for r in requirements)
    assert (folder / "hf_sae" / "app.py").is_file() and not list(folder.rglob("__pycache__"))
    with pytest.raises(ArgumentError, match="holds files"):
        write_space(folder, "you/other")
    assert "you/smollm2-saes" in (folder / "app.py").read_text()


def test_push_space_uploads_the_app_beside_the_sae_repo(api, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the error itself, not its one-line print
    from huggingface_hub import hf_hub_download
    from test_hub import ALICE, BASE_MODEL, LAYERS, make_sae

    from hf_sae.cli import main

    for hookpoint in LAYERS[:2]:
        make_sae(hookpoint).save_pretrained(tmp_path / "run" / hookpoint)
    push = ["push", "--sae", str(tmp_path / "run"), "--repo_id", "alice/saes", "--token", ALICE]
    with pytest.raises(ArgumentError, match="pick the Space's with --space_hookpoint"):
        main([*push, "--space", "alice/saes-explorer"])
    assert not api.repo_exists("alice/saes")  # refused before anything was uploaded
    assert main([*push, "--space", "alice/saes-explorer", "--space_hookpoint", LAYERS[1]]) == 0
    files = set(api.list_repo_files("alice/saes-explorer", repo_type="space"))
    assert {"app.py", "requirements.txt", "README.md", "hf_sae/app.py", "hf_sae/hooks.py"} <= files
    readme = Path(hf_hub_download("alice/saes-explorer", "README.md", repo_type="space", token=ALICE)).read_text()
    assert "sdk: gradio\n" in readme.split("---\n")[1] and f"  - alice/saes\n  - {BASE_MODEL}\n" in readme
    app = Path(hf_hub_download("alice/saes-explorer", "app.py", repo_type="space", token=ALICE)).read_text()
    assert f"load_explorer('alice/saes', hookpoint={LAYERS[1]!r})" in app
    assert f"{LAYERS[1]}/config.json" in api.list_repo_files("alice/saes")


def test_load_explorer_needs_feature_metadata_and_names_the_command(explorer, tmp_path):
    from hf_sae.app import load_explorer
    from hf_sae.arguments import LanguageModelArguments
    from hf_sae.errors import FeatureMetadataError

    explorer.model.save_pretrained(tmp_path / "lm")
    explorer.tokenizer.save_pretrained(tmp_path / "lm")
    explorer.sae.save_pretrained(tmp_path / "sae")
    lm_args = LanguageModelArguments(model_name_or_path=str(tmp_path / "lm"))
    with pytest.raises(FeatureMetadataError, match=f"hf-sae features --sae {tmp_path / 'sae'}"):
        load_explorer(str(tmp_path / "sae"), lm_args, device="cpu")
    explorer.features.save_pretrained(tmp_path / "sae" / "features")
    loaded = load_explorer(str(tmp_path / "sae"), lm_args, device="cpu")
    assert loaded.hookpoint == "model.layers.1" and len(loaded.features) == 48
    assert loaded.steer(PROMPT, "3:30", "clamp", 5) == explorer.steer(PROMPT, "3:30", "clamp", 5)


# ---- several users, bounded prompts, checked values, clear errors ---------------------------------------------------


def test_requests_that_use_the_model_run_one_at_a_time(explorer, monkeypatch):
    import contextlib
    import threading
    import time

    real, inside = explorer.model.generate, threading.Event()

    def slow_generate(*args, **kwargs):  # a steering request that holds the model for a while
        inside.set()
        handle = explorer.model.model.layers[0].register_forward_hook(lambda *_: time.sleep(0.02))
        try:
            return real(*args, **kwargs)
        finally:
            handle.remove()

    def race() -> tuple[list, dict]:
        """A steering request, and prompt-box requests sent while its generate() runs: (errors, what each got)."""
        inside.clear()
        errors, seen = [], {"prompts": []}

        def steer():
            try:
                seen["steered"] = explorer.steer(PROMPT, "3:30", "clamp", 5)
            except Exception as error:  # noqa: BLE001 (what that user would see)
                errors.append(error)
            seen["steer done"] = time.monotonic()

        user = threading.Thread(target=steer)
        user.start()
        inside.wait(10)
        seen["prompt sent"] = time.monotonic()
        while user.is_alive() or not seen["prompts"]:
            try:
                seen["prompts"].append(explorer.prompt_features(PROMPT))
            except Exception as error:  # noqa: BLE001
                errors.append(error)
        user.join()
        return errors, seen

    solo_steer, solo_prompt = explorer.steer(PROMPT, "3:30", "clamp", 5), explorer.prompt_features(PROMPT)
    monkeypatch.setattr(explorer.model, "generate", slow_generate)
    with monkeypatch.context() as unlocked:  # the condition: without the lock, one user's hooks break the other's
        unlocked.setattr(explorer, "_model_lock", contextlib.nullcontext())
        errors, _ = race()
        assert errors, "the requests did not collide"
    errors, seen = race()
    assert not errors and seen["prompt sent"] < seen["steer done"]  # a prompt came while the model was busy
    assert seen["steered"] == solo_steer and seen["prompts"] == [solo_prompt]


def test_prompts_are_capped_to_the_models_context_and_the_page_says_so(explorer):
    long = " ".join(["w5"] * 200)
    tokens = len(explorer.tokenizer(long, add_special_tokens=False)["input_ids"])
    assert tokens > explorer.context == 64  # the condition: the text runs past the model's positions
    with pytest.raises(ArgumentError, match=rf"The text makes {tokens + 1} tokens; the model reads at most 64 \(its"):
        explorer.prompt_features(long)
    prompt = " ".join(["w5"] * 40)
    alone = len(explorer.tokenizer([prompt])["input_ids"][0])
    assert alone <= 64 < alone + 30  # fits alone, not with its continuation
    with pytest.raises(ArgumentError, match=rf"The prompt with its new tokens makes {alone + 30} tokens; the model"):
        explorer.steer(prompt, "3:30", "clamp", 30)
    from hf_sae.app import build_app

    labels = {b.elem_id: b.label for b in build_app(explorer).blocks.values() if getattr(b, "elem_id", None)}
    assert "(at most 64 tokens: the model's context)" in labels["prompt-text"]
    assert "(at most 64 tokens: the model's context), new tokens included" in labels["steer-prompt"]


@pytest.mark.parametrize("spec, fragment", [("3:nan", "got nan"), ("3:inf", "got inf"), ("3:1e308", "got 1e\\+308"),
                                            ("3:-2e4", "got -20000"), ("48:2", "Feature 48 is not in")])  # fmt: skip
def test_steering_values_are_checked(explorer, spec, fragment):
    with pytest.raises(ArgumentError, match=rf"(must be a number from -10000 to 10000 .*)?{fragment}"):
        explorer.steer(PROMPT, spec, "clamp", 5)
    for tokens in (0, 201, 2.5, float("nan")):
        with pytest.raises(ArgumentError, match=r"New tokens must be a whole number from 1 to 200"):
            explorer.steer(PROMPT, "3:30", "clamp", tokens)


def test_user_errors_show_in_the_page_and_never_as_tracebacks_in_the_log(served, capfd):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    for inputs, endpoint, fragment in [
        ((PROMPT, "3:nan", "clamp", 5), "/steer", "The strength of feature 3 must be a number"),
        ((PROMPT, "3:1e308", "clamp", 5), "/steer", "got 1e\\+308"),
        ((PROMPT, "3:lots", "clamp", 5), "/steer", "Expected features as `id:strength, id, ...`; got '3:lots'"),
        ((" ".join(["w5"] * 200), 5), "/prompt_features", "the model reads at most 64"),
    ]:
        with pytest.raises(AppError, match=fragment):
            client.predict(*inputs, api_name=endpoint)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_write_space_into_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArgumentError, match=r"Expected a new or empty folder for the Space; .*notes.txt is a file"):
        write_space(tmp_path / "notes.txt", "you/saes")
    from hf_sae.errors import WriteError

    with pytest.raises(WriteError, match=r"--write_space .*notes.txt/space cannot be written"):
        write_space(tmp_path / "notes.txt" / "space", "you/saes")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_space_push_without_write_access_says_what_was_pushed(api, tmp_path, capsys):  # noqa: F811
    from test_hub import ALICE, LAYERS, make_sae

    from hf_sae.cli import main

    make_sae(LAYERS[0]).save_pretrained(tmp_path / "run" / LAYERS[0])
    push = ["push", "--sae", str(tmp_path / "run"), "--repo_id", "alice/saes", "--token", ALICE]
    assert main([*push, "--space", "bob/explorer"]) == 1  # alice cannot write to bob's namespace
    out, err = capsys.readouterr()
    assert "Pushed to " in out and f"{LAYERS[0]}/config.json" in api.list_repo_files("alice/saes")  # the SAEs went
    assert "hf-sae push: error: Pushing the Space 'bob/explorer' failed: HTTP 403" in err and "Traceback" not in err
    assert "the SAE repo alice/saes is as this step found it" in err
    assert not api.repo_exists("bob/explorer", repo_type="space")


# ---- the graph tab: an attribution graph read from its JSON, its feature nodes switched off -------------------------


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The graph tab over a graph of the tiny float64 Llama with its transcoders, written by `write_graph_json`."""
    from test_attribution import IDS, make_transcoders, tiny_lm

    from hf_sae.app import GraphExplorer
    from hf_sae.attribution import attribute, write_graph_json
    from hf_sae.graph_interventions import GraphInterventions

    lm = tiny_lm()
    transcoders = make_transcoders(lm)
    graph = attribute(lm, tiny_tokenizer(), transcoders, IDS, max_feature_nodes=None)
    path = write_graph_json(graph, tmp_path_factory.mktemp("graphs"), "tiny")
    return GraphExplorer(GraphInterventions(lm, tiny_tokenizer(), transcoders), path), lm, transcoders, IDS


def _top_feature_and_logit(graph: dict) -> tuple[dict, dict]:
    """The feature node with the most influence (the smallest cumulative share), and the graph's top logit."""
    features = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    return min(features, key=lambda n: n["influence"]), next(n for n in graph["nodes"] if n["is_target_logit"])


def test_graph_tab_ablating_the_top_feature_moves_the_top_logit_as_sae_hooks_does(graphs):
    import re
    from contextlib import ExitStack

    from hf_sae import SaeHooks

    explorer, lm, transcoders, ids = graphs
    assert explorer.slugs() == ["tiny"] and explorer.selected == "tiny"  # graph-metadata.json is no graph
    graph, view = explorer.load("tiny")
    assert view.count('class="node ') == len(graph["nodes"]) > 0
    top, logit = _top_feature_and_logit(graph)
    layer, feature, pos = (int(part) for part in top["node_id"].split("_"))
    table = explorer.intervene(graph, top["node_id"], 10)
    rows = dict(re.findall(r'data-token-id="(\d+)" data-logit="([^"]+)"', table))
    saes = {f"layer{k}": sae for k, sae in transcoders.items()}
    hooks = SaeHooks(lm, saes, all_tokens=True)  # the same edit, written out
    with torch.no_grad(), ExitStack() as stack:
        stack.enter_context(hooks.splice(error_term=True))
        before = lm(ids[None]).logits[0, -1, logit["feature"]].item()
        stack.enter_context(hooks.ablate([feature], hookpoint=f"layer{layer}", positions=[pos]))
        after = lm(ids[None]).logits[0, -1, logit["feature"]].item()
    assert abs(after - before) > 1e-3  # switching it off moved the top logit
    assert float(rows[str(logit["feature"])]) == pytest.approx(after, abs=1e-6)
    base = re.search(rf'data-token-id="{logit["feature"]}" data-logit="[^"]+" data-base-logit="([^"]+)"', table)
    assert float(base.group(1)) == pytest.approx(before, abs=1e-6)
    assert table.count('class="graph-logit"') == sum(n["feature_type"] == "logit" for n in graph["nodes"])
    with pytest.raises(ArgumentError, match="Open or trace a graph first"):
        explorer.intervene(None, top["node_id"])
    with pytest.raises(ArgumentError, match=r"No graph '../tiny' in .*; pick one of \['tiny'\]"):
        explorer.load("../tiny")  # only the folder's graphs open


def test_graph_tab_traces_a_typed_prompt_and_refuses_a_long_one(graphs, monkeypatch):
    from hf_sae import app as app_module
    from hf_sae.attribution import attribute, graph_json

    explorer, lm, transcoders, _ = graphs
    graph, view = explorer.trace("w5 w17 w42 w8 w33")
    expected = graph_json(attribute(lm, tiny_tokenizer(), transcoders, "w5 w17 w42 w8 w33"), "explorer")
    assert graph["metadata"]["prompt_tokens"] == ["w5", "w17", "w42", "w8", "w33"]
    assert [n["node_id"] for n in graph["nodes"]] == [n["node_id"] for n in expected["nodes"]]
    assert view.count('class="node ') == len(graph["nodes"])
    monkeypatch.setattr(app_module, "MAX_TRACED", 4)
    calls = []
    monkeypatch.setattr(app_module, "attribute", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ArgumentError, match="The prompt makes 5 tokens; the explorer traces at most 4"):
        explorer.trace("w5 w17 w42 w8 w33")
    assert calls == []  # refused before any tracing
    from hf_sae.app import GraphExplorer

    with pytest.raises(ArgumentError, match="Tracing and editing need the graph's LM"):
        GraphExplorer(None, explorer.folder).trace("w5")
    with pytest.raises(ArgumentError, match=r"Expected a graph JSON file or a folder of them; .*nowhere is neither"):
        GraphExplorer(None, explorer.folder / "nowhere")


def test_graph_tab_in_headless_chromium(chrome, graphs):  # noqa: F811
    from selenium.webdriver import ActionChains

    from hf_sae.app import build_app
    from hf_sae.graph_page import node_label

    explorer = graphs[0]
    graph, _ = explorer.load("tiny")
    top, logit = _top_feature_and_logit(graph)
    app = build_app(None, graphs=explorer)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        chrome.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: chrome.find_elements("css selector", "#graph-load"), timeout=60)
        chrome.find_element("css selector", "#graph-load").click()
        wait_for(lambda: len(chrome.find_elements("css selector", "#graph-html .node")) == len(graph["nodes"]), 60)
        node = chrome.find_element("css selector", f'#graph-html .node[data-id="{top["node_id"]}"]')
        ActionChains(chrome).move_to_element(node).perform()  # the page's script runs inside the app too
        wait_for(lambda: _text(chrome, "#graph-html .hf-graph-tip"))
        label = node_label(top, graph["metadata"]["prompt_tokens"])  # its clerp, or what it is
        assert _text(chrome, "#graph-html .hf-graph-tip").splitlines()[0] == label
        chrome.find_element("css selector", "#graph-nodes textarea").send_keys(top["node_id"])
        chrome.find_element("css selector", "#graph-go").click()
        wait_for(lambda: len(chrome.find_elements("css selector", "#graph-logits-html tr.edited-logit")) == 10, 60)
        shown = chrome.find_elements("css selector", "#graph-logits-html tr.graph-logit")
        assert [row.text for row in shown] == [n["clerp"] for n in graph["nodes"] if n["feature_type"] == "logit"]
        assert [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"] == []
        chrome.execute_script("arguments[0].scrollIntoView()", chrome.find_element("css selector", "#graph-nodes"))
        chrome.save_screenshot(str(Path(os.environ.get("TMPDIR", "/tmp")) / "app_graph.png"))
    finally:
        app.close()


def test_load_graph_explorer_reads_the_graphs_transcoders_and_lm_from_their_folders(graphs, tmp_path):
    import re

    from hf_sae.app import load_graph_explorer
    from hf_sae.errors import SaeNotFoundError

    explorer, lm, transcoders, _ = graphs
    lm.save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    for sae in transcoders.values():
        sae.save_pretrained(tmp_path / "transcoders" / sae.config.hookpoint)
    with pytest.raises(SaeNotFoundError):  # before the LM loads
        load_graph_explorer(explorer.folder, str(tmp_path / "nowhere"), str(tmp_path / "lm"), device="cpu")
    loaded = load_graph_explorer(explorer.folder / "tiny.json", str(tmp_path / "transcoders"), str(tmp_path / "lm"),
                                 device="cpu")  # fmt: skip
    assert loaded.selected == "tiny" and sorted(loaded.interventions.transcoders) == sorted(transcoders)
    graph, _ = loaded.load("tiny")
    node = next(n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder")["node_id"]

    def logits(table: str) -> dict[str, float]:
        return {k: float(v) for k, v in re.findall(r'data-token-id="(\d+)" data-logit="([^"]+)"', table)}

    assert logits(loaded.intervene(graph, node)) == pytest.approx(logits(explorer.intervene(graph, node)), abs=1e-5)
    shown_only = load_graph_explorer(explorer.folder)
    assert shown_only.interventions is None and shown_only.slugs() == ["tiny"]


def test_hf_sae_app_serves_graphs_without_an_sae_and_refuses_nothing_to_show(graphs, monkeypatch):
    from hf_sae import cli

    launched = {}

    class Launch:
        def __init__(self, explorer, graphs=None):
            launched.update(explorer=explorer, graphs=graphs)

        def launch(self, **kwargs):
            launched["launch"] = kwargs

    monkeypatch.setattr(cli, "build_app", Launch)
    folder = str(graphs[0].folder)
    assert cli.app_command(["--graph", folder, "--port", "7999"]) == 0
    assert launched["explorer"] is None and launched["launch"]["server_port"] == 7999
    served = launched["graphs"]
    assert served.slugs() == ["tiny"] and served.interventions is None  # the folder's graph, no LM loaded
    with pytest.raises(ArgumentError, match="needs something to show: --sae"):
        cli.app_command([])
    with pytest.raises(ArgumentError, match="--write_space writes a Space for one SAE: name it with --sae"):
        cli.app_command(["--graph", folder, "--write_space", "space"])


def test_the_list_sorts_by_interpretability_and_the_page_shows_the_score_dense_flag_and_text(explorer):
    listed = explorer.feature_list()
    scores = explorer.features.stats["interpretability"]
    assert listed["feature"].iloc[0] == scores.idxmax() and scores.max() > 0
    assert listed["interpretability"].dropna().is_monotonic_decreasing
    dense = int(explorer.features.stats["frequency"].idxmax())
    assert explorer.features.stats["dense"][dense]  # a random relu SAE fires some latents on over 1% of tokens
    page = explorer.feature_page(dense)
    assert '<span class="dense"' in page and "interpretability <b>" in page
    assert "harmonic mean" in page and 'below 0.5 a label reads "no clear pattern"' in page


def _with_one_dense(features, feature: int):
    """The same metadata with `feature` alone dense: it fires on half the tokens, every other one on 0.1%."""
    import pyarrow as pa

    from hf_sae.feature_store import FeatureMetadata
    from hf_sae.interpretability import DENSE_FREQUENCY

    table = features.stats_table
    values = [0.5 if i == feature else 0.001 for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("frequency"), "frequency", pa.array(values))
    flags = pa.array([f > DENSE_FREQUENCY for f in values])
    table = table.set_column(table.schema.get_field_index("dense"), "dense", flags)
    return FeatureMetadata(table, features.examples_table(), features.metadata)


def test_the_contrast_search_leaves_a_dense_latent_out_unless_asked(explorer):
    from hf_sae.latent_search import find_latents

    positives, negatives = ["w5 w6 w7 w5", "w5 w9 w5"], ["w30 w31 w32", "w40 w41"]
    model, tokenizer, sae = explorer.model, explorer.tokenizer, explorer.sae

    def peaks(texts):  # each latent's largest activation on each text, through `explain` (every latent listed)
        rows = [explain(model, tokenizer, sae, t, top=48) for t in texts]
        table = torch.zeros(len(texts), 48)
        for k, tokens in enumerate(rows):
            for row in tokens:
                for f in row["features"]:
                    table[k, f["feature"]] = max(table[k, f["feature"]], f["activation"])
        return table.mean(0)

    peak = torch.tensor(explorer.features.stats["robust_peak"].to_numpy(), dtype=torch.float32)
    scale = torch.where(peak.isfinite() & (peak > 0), peak, 1.0)
    contrast = (peaks(positives) - peaks(negatives)) / scale
    best = int(contrast.argmax())
    features = _with_one_dense(explorer.features, best)
    every = find_latents(model, tokenizer, sae, positives, negatives, top=5, include_dense=True, features=features)
    assert [f["feature"] for f in every] == contrast.argsort(descending=True)[:5].tolist()
    assert every[0]["dense"] and every[0]["contrast"] == pytest.approx(float(contrast[best]), rel=1e-5)
    sparse = find_latents(model, tokenizer, sae, positives, negatives, top=4, features=features)
    assert [f["feature"] for f in sparse] == [f["feature"] for f in every[1:5]] and not any(f["dense"] for f in sparse)
    with pytest.raises(ArgumentError, match=r"Give at least one text in positives"):
        find_latents(model, tokenizer, sae, ["  "], negatives, features=features)
    html_page = Explorer(model, tokenizer, sae, features).find_latents("\n".join(positives), "\n".join(negatives))
    assert f"#{best}" not in html_page and "Dense latents are left out" in html_page


def test_bad_ids_texts_and_raw_api_calls_are_messages_never_tracebacks(served, capfd, caplog):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    with caplog.at_level("DEBUG"):
        for bad in ("abc", -5, 10**9):
            assert "No feature" in client.predict(bad, api_name="/feature_page")
        for inputs, endpoint, fragment in [
            ((123, 5), "/prompt_features", "The text must be a text; got int '123'"),
            ((PROMPT, "3", "sideways", 5), "/steer", "The mode must be clamp or add; got 'sideways'"),
            ((PROMPT, ["3"], "clamp", 5), "/steer", "The features must be a text; got list"),
            (("", "w5", False), "/find_latents", "Give at least one text in positives"),
            (("w5", "w6", "yes"), "/find_latents", "Include dense latents must be true or false; got 'yes'"),
        ]:
            with pytest.raises(AppError, match=fragment):
                client.predict(*inputs, api_name=endpoint)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
