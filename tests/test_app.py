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
