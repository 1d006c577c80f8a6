"""Automatic interpretability: random contexts against a direct computation, the scores against hand counts, the run's
saving, resuming and bad input, with tiny LMs as explainer; then the built-in SmolLM2 explaining, locally and through
`transformers serve` on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm
from test_browser import chrome, heading, rows, wait_for  # noqa: F401 (chrome is a fixture)
from test_features import brute_force, collect, tiny_sae, tiny_tokenizer, token_blocks
from test_hub import ALICE, hub, hub_server  # noqa: F401 (fixtures)

from hf_sae.autointerp import (
    DETECTION_PROMPT,
    EndpointChat,
    ExplainSettings,
    LocalChat,
    auroc,
    balanced_accuracy,
    explain_features,
    parse_explanation,
    parse_yes_no,
    render,
    sample_contexts,
    shuffled_control,
)
from hf_sae.browser import write_browser
from hf_sae.cli import main
from hf_sae.errors import ExplainerError, FeatureMetadataError
from hf_sae.feature_store import EXPLANATIONS, RANDOM_CONTEXTS, FeatureMetadata, load_features
from hf_sae.layout import FEATURES

SEQ = 24


@pytest.fixture(scope="module")
def collected():
    """(features, latents of every token, ids): tiny-LM metadata of 40 blocks, with the brute-force latents."""
    lm = make_tiny_lm("llama")
    sae, ids = tiny_sae(lm.hidden_size, hookpoint=lm.blocks[1]), token_blocks(40, SEQ)
    features = collect(lm.model, tiny_tokenizer(), sae, ids)
    with torch.no_grad():  # every token's latents, uncounted ones included (random windows show every token)
        seen = []
        handle = lm.model.get_submodule(lm.blocks[1]).register_forward_hook(lambda m, a, out: seen.append(out))
        lm.model(ids)
        handle.remove()
        z = sae.encode(seen[0])  # (blocks, seq, num_latents)
    counted = brute_force(lm.model, sae, lm.blocks[1], ids)
    assert torch.equal(z * (counted > 0), counted)  # the same latents as the statistics saw
    return features, z, ids


@pytest.fixture
def saved(collected, tmp_path) -> FeatureMetadata:
    f = collected[0]
    FeatureMetadata(f.stats_table, f.examples_table(), f.metadata, random_contexts=f.random_contexts).save_pretrained(
        tmp_path / FEATURES
    )
    return FeatureMetadata.load(tmp_path / FEATURES)


class TinyChat(LocalChat):
    """A tiny random llama as the explainer and scorer (a real transformers model, seconds per batch); the explainer's
    answers in calls `useless` are replaced by a useless one, and calls after `fail_after` stop the run."""

    def __init__(self, useless: tuple[int, ...] = (), fail_after: int | None = None):
        tokenizer = tiny_tokenizer()
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}w5"
        super().__init__(make_tiny_lm("llama").model, tokenizer, "tiny-llama")
        self.useless, self.fail_after, self.calls = useless, fail_after, []

    def generate(self, prompts, max_new_tokens):
        self.calls.append(len(prompts))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt  # the run stopped here
        out = super().generate(prompts, max_new_tokens)
        return ["  <<>> ..."] * len(out) if len(self.calls) in self.useless else out


def test_random_contexts_are_windows_with_the_features_that_fire_in_them(collected):
    features, z, ids = collected
    table = features.random_contexts.to_pylist()
    assert len(table) == 40  # fewer blocks than the sample's size: one window of each
    length = features.metadata["context_before"] + 1 + features.metadata["context_after"]
    for row in table:
        block, start = row["block"], row["position"]
        assert 1 <= start <= SEQ - length
        assert row["token_ids"] == ids[block, start : start + length].tolist()
        fired = (z[block, start : start + length] > 0).any(0).nonzero().flatten().tolist()
        assert row["fired"] == fired and fired


def test_reservoir_keeps_a_uniform_sample():
    from hf_sae.random_contexts import RandomContextSampler

    hits = np.zeros(200)
    for seed in range(200):
        sampler = RandomContextSampler(3, size=20, seed=seed)
        for start in range(0, 200, 8):
            sampler.update(torch.ones(8, 6, 2), torch.arange(start, start + 8)[:, None].expand(8, 6))
        blocks = [row[0] for row in sampler.rows.values()]
        assert len(set(blocks)) == 20
        hits[blocks] += 1
    # each of 200 blocks is kept with probability 1/10: 20 of 200 runs on average, first and last halves alike
    assert abs(hits[:100].mean() - 20) < 2 and abs(hits[100:].mean() - 20) < 2


def test_scores_against_hand_counts():
    labels = [True, True, True, False, False]
    p = [0.9, 0.4, 0.7, 0.2, 0.6]
    # TPR 2/3, TNR 1/2; pairs (pos > neg): 0.9>both, 0.4>0.2, 0.7>both: 5 of 6
    assert balanced_accuracy(labels, p) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert auroc(labels, p) == pytest.approx(5 / 6)
    assert auroc([True, False], [0.5, 0.5]) == 0.5
    answers = [1.0, None, 0.0, 0.0, 1.0]  # text answers: unparsed ones are left out
    assert balanced_accuracy(labels, answers) == auroc(labels, answers) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert balanced_accuracy([True, True], [0.9, 0.9]) is None


def test_parsers():
    assert parse_explanation('Explanation: "numbers in dates"\nmore') == "numbers in dates"
    assert parse_explanation("\n\n  the word <<Paris>>  ") == "the word Paris"
    assert parse_explanation("") is None and parse_explanation(" ... <<>> 7") is None
    assert [parse_yes_no(a) for a in ("Yes.", " no, it is not", "**Yes**", "Maybe", "")] == [1.0, 0.0, 1.0, None, None]
    assert render(["The", " cat", "\n", " sat"], [1]) == "The<< cat>> sat"


def test_sampling_holds_out_scoring_contexts_and_silent_ones_are_silent(collected):
    features, z, ids = collected
    settings = ExplainSettings(explain_examples=3, score_examples=2)
    for index in range(10):
        contexts = sample_contexts(features, index, settings)
        ranks = [e["rank"] for e in features.examples_table(index).to_pylist()]
        assert [e["rank"] for e in contexts["explain"]] == sorted(ranks)[0::2][:3]
        where = lambda examples: [(e["block"], e["position"]) for e in examples]  # noqa: E731
        binned = features.quantile_examples_table(index).to_pylist()
        assert set(where(contexts["activating"])) <= set(where(binned)) - set(where(contexts["explain"]))
        bins = [e["bin"] for e in contexts["activating"]]
        assert len(bins) == min(2, len(binned)) and len(set(bins)) == min(2, len({e["bin"] for e in binned}))
        assert len(contexts["silent"]) == len(contexts["activating"])
        by_tokens = {tuple(r["tokens"]): r for r in features.random_contexts.to_pylist()}
        for tokens in contexts["silent"]:
            row = by_tokens[tuple(tokens)]
            window = z[row["block"], row["position"] : row["position"] + len(tokens), index]
            assert (window == 0).all()
        assert sample_contexts(features, index, settings) == contexts  # seeded: the control sees the same contexts


def test_run_saves_each_batch_resumes_and_records_unusable_answers(saved):
    settings = ExplainSettings(explain_examples=2, score_examples=2, max_new_tokens=4)
    chat = TinyChat(useless=(2,), fail_after=2)  # feature 1's explanation is useless
    with pytest.raises(KeyboardInterrupt):
        explain_features(saved, chat, [0, 1, 2, 3], batch_size=1, settings=settings)
    assert chat.calls == [1, 1, 1]  # the third batch's explanation was asked, then the run stopped
    on_disk = json.loads((saved.path / EXPLANATIONS).read_text())
    assert sorted(on_disk["features"]) == ["0", "1"]
    assert on_disk["features"]["1"]["status"] == "unusable" and on_disk["features"]["1"]["raw"] == "  <<>> ..."
    assert on_disk["features"]["0"]["status"] == "ok" and on_disk["features"]["0"]["detection_questions"] == 4
    assert on_disk["features"]["0"]["fuzzing_questions"] == 4

    again = TinyChat()
    done = explain_features(load_features(saved.path.parent), again, [0, 1, 2, 3], batch_size=2, settings=settings)
    assert sorted(done) == [2, 3] and again.calls == [2]  # 0 and 1 were not asked again
    reloaded = load_features(saved.path.parent)
    assert reloaded[2].explanation == done[2] and reloaded[1].explanation["status"] == "unusable"
    assert "explanation=" in repr(reloaded[2]) and reloaded[2]["explanation"]["explainer"] == "tiny-llama"

    budget = explain_features(reloaded, TinyChat(), None, max_features=3, settings=settings)
    assert list(budget) == [i for i in range(48) if saved.stats["count"][i] > 0 and i > 3][:3]


def test_shuffled_control_scores_each_feature_with_another_ones_explanation(saved):
    settings = ExplainSettings(explain_examples=2, score_examples=2)
    ok = [0, 2, 4, 5]
    saved.save_explanations(
        {"features": {str(i): {"status": "ok", "explanation": f"e{i}", "detection": i / 10} for i in ok}}
    )
    chat, asked = TinyChat(), []
    score = chat.yes_probability
    chat.yes_probability = lambda prompts: asked.extend(prompts) or score(prompts)
    summary = shuffled_control(saved, chat, ok, settings=settings)
    donors = {}
    for i in ok:
        text = render(sample_contexts(saved, i, settings)["activating"][0]["tokens"])
        used = [j for j in ok if DETECTION_PROMPT.format(explanation=f"e{j}", text=text) in asked]
        assert len(used) == 1 and used[0] != i
        donors[i] = used[0]
    assert sorted(donors.values()) == ok  # a permutation without fixed points
    assert len(asked) == 4 * len(ok)  # detection only: 2 activating and 2 silent contexts each
    assert summary["features"] == 4 and summary["detection"] == pytest.approx(np.mean([0, 0.2, 0.4, 0.5]))
    assert 0 <= summary["shuffled_detection_auroc"] <= 1
    assert json.loads((saved.path / EXPLANATIONS).read_text())["control"] == summary


def test_metadata_round_trip_keeps_random_contexts_and_explanations(saved, tmp_path):
    saved.save_explanations({"features": {"3": {"explanation": "w7 words", "detection": 0.75}}})
    copy = saved.save_pretrained(tmp_path / "copy" / FEATURES)
    loaded = FeatureMetadata.load(copy)
    assert loaded.random_contexts.equals(saved.random_contexts)
    assert loaded[3].explanation == {"explanation": "w7 words", "detection": 0.75} and loaded[4].explanation == {}


def test_explanations_go_to_the_hub_and_come_back(saved, hub, monkeypatch):  # noqa: F811
    from hf_sae.hub import load_saes, push_saes_to_hub

    entry = {"status": "ok", "explanation": "w7 words", "detection": 0.75, "detection_auroc": 0.8}
    saved.save_explanations({"explainer": "tiny", "features": {"3": entry}})
    lm = make_tiny_lm("llama")
    push_saes_to_hub("alice/explained", {lm.blocks[1]: tiny_sae(lm.hidden_size, hookpoint=lm.blocks[1])},
                     token=ALICE, features={lm.blocks[1]: saved.path})  # fmt: skip
    loaded = load_saes("alice/explained")[lm.blocks[1]]
    assert loaded.features[3].explanation == entry and loaded.features.random_contexts.equals(saved.random_contexts)


def test_browser_shows_explanations(saved, tmp_path):
    saved.save_explanations({"features": {"3": {"explanation": "w7 words", "detection": 0.75, "fuzzing": 0.5}}})
    page = write_browser(saved, tmp_path / "browser").read_text()
    index = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])["index"]
    assert index["explanation"][3] == "w7 words" and index["scores"][3] == [0.75, 0.5]
    assert index["explanation"][2] is None and index["scores"][2] == [None, None]


def test_odd_values_in_a_well_formed_explanations_file_show_as_missing(saved, tmp_path):
    saved.save_explanations({"features": {"3": {"explanation": "w7 words", "detection": "high", "fuzzing": [1]}}})
    page = write_browser(saved, tmp_path / "browser").read_text()
    index = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])["index"]
    assert index["explanation"][3] == "w7 words" and index["scores"][3] == [None, None]


def test_browser_shows_explanations_in_headless_chromium(chrome, saved, tmp_path):  # noqa: F811
    saved.save_explanations({"features": {"3": {"explanation": "zyzzyva words", "detection": 0.75, "fuzzing": 0.5}}})
    chrome.get(write_browser(saved, tmp_path / "browser").as_uri())
    wait_for(lambda: sorted(rows(chrome)) == list(range(48)))  # by interpretability score
    chrome.find_element("id", "search").send_keys("zyzzyva")  # search finds explanations too
    wait_for(lambda: rows(chrome) == [3])
    chrome.get(f"{(tmp_path / 'browser' / 'index.html').as_uri()}#3")
    text = wait_for(lambda: (found := chrome.find_elements("id", "feature-explanation")) and found[0].text)
    assert "zyzzyva words" in text and "detection 0.75" in text and "fuzzing 0.5" in text
    chrome.get(f"{(tmp_path / 'browser' / 'index.html').as_uri()}#2")
    wait_for(lambda: heading(chrome) == "Feature 2")
    assert not chrome.find_elements("id", "feature-explanation")
    assert not [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]


def test_explorer_page_shows_explanations(saved):
    pytest.importorskip("gradio", reason="needs Gradio: pip install -e '.[dev]'")
    from hf_sae.app import Explorer

    saved.save_explanations({"features": {"3": {"status": "ok", "explanation": "w7 words", "detection": 0.75}}})
    lm = make_tiny_lm("llama")
    explorer = Explorer(lm.model, tiny_tokenizer(), tiny_sae(lm.hidden_size, hookpoint=lm.blocks[1]), saved)
    page = explorer.feature_page(3)
    assert "<b>explanation</b>: w7 words" in page and "<b>detection</b>: 0.75" in page  # from `hf-sae explain`
    assert "w7 words" not in explorer.feature_page(2)


def test_bad_input_fails_before_any_work(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the error itself, not its one-line print
    sae_dir = saved.path.parent
    with pytest.raises(FeatureMetadataError, match=r"Collect it with `hf-sae features --sae "):
        main(["explain", "--sae", str(tmp_path / "elsewhere")])
    port = _free_port()
    with pytest.raises(ExplainerError, match=rf"--explainer_endpoint http://127.0.0.1:{port}/v1.*Start it"):
        main(["explain", "--sae", str(sae_dir), "--explainer_endpoint", f"http://127.0.0.1:{port}/v1"])
    assert not (saved.path / EXPLANATIONS).exists()
    with pytest.raises(Exception, match=r"--features must be feature ids in \[0, 48\); got \[48\]"):
        main(["explain", "--sae", str(sae_dir), "--features", "3", "48"])
    base = saved.path.parent / "base-lm"  # a model without a chat template cannot be asked
    make_tiny_lm("llama").model.save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    with pytest.raises(
        ExplainerError, match=r"Expected a chat model for --explainer; .*base-lm's tokenizer has no chat"
    ):
        main(["explain", "--sae", str(sae_dir), "--explainer", str(base)])
    assert not (saved.path / EXPLANATIONS).exists()
    (saved.path / RANDOM_CONTEXTS).unlink()  # metadata written before random contexts were collected
    with pytest.raises(FeatureMetadataError, match=r"no random_contexts.parquet.*`hf-sae features --sae "):
        main(["explain", "--sae", str(sae_dir)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the built-in SmolLM2 -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_builtin_model_explains_from_the_command_line(saved, capsys):
    sae_dir = saved.path.parent
    args = ["--explain_examples", "3", "--score_examples", "1", "--no_fuzzing", "--control"]
    assert main(["explain", "--sae", str(sae_dir), "--features", "0", "2", *args]) == 0
    out = capsys.readouterr().out
    entries = load_features(sae_dir).explanations["features"]
    assert sorted(entries) == ["0", "2"] and all(
        e["explainer"] == "HuggingFaceTB/SmolLM2-135M-Instruct" for e in entries.values()
    )
    ok = [e for e in entries.values() if e["status"] == "ok"]
    assert ok and all(0 <= e["detection_auroc"] <= 1 and e["detection_questions"] == 2 for e in ok)
    assert f"Explained {len(ok)} features" in out and "shuffled control, mean detection" in out


@pytest.fixture(scope="module")
def served():
    """`transformers serve` with the built-in model's cached safetensors copy, on a free port of 127.0.0.1."""
    from hf_sae.models import load_model
    from hf_sae.offline import cache_dir
    from hf_sae.offline.builtin_models import DEFAULT_MODEL

    pytest.importorskip("openai", reason="`transformers serve` needs transformers[serving] (the dev extra has it)")
    load_model()  # makes the cached copy
    folder, port = str(cache_dir("models", DEFAULT_MODEL)), _free_port()
    serve = [os.path.join(os.path.dirname(sys.executable), "transformers"), "serve", folder]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*serve, "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(1)
        yield url, folder
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.slow
def test_endpoint_explains_through_transformers_serve(served, saved):
    url, folder = served
    chat = EndpointChat(url)  # the model is the one the server lists
    assert chat.name == folder
    settings = ExplainSettings(explain_examples=3, score_examples=1, fuzzing=False, max_new_tokens=16)
    done = explain_features(saved, chat, [0], settings=settings)
    entry = done[0]
    assert entry["explainer"] == folder and entry["status"] in ("ok", "unusable")
    if entry["status"] == "ok":
        assert entry["detection_questions"] == 2 and entry["detection"] in (0.0, 0.5, 1.0, None)
    assert load_features(saved.path.parent)[0].explanation == entry


# ---- the explainer's HTTP: the key stays with its host, failures are retried, answers are bounded -------------------


class FakeLLM:
    """An OpenAI-compatible server on 127.0.0.1 (http.server): lists model `fake` (or `listing`), and answers chat
    completions as `mode` says: `ok` (an explanation, or Yes to a scoring question), `500`, `401`, `html`, `garbage`
    (random bytes, no HTTP), `not-chat` (JSON of another shape), `redirect` (302 to `target`, every path),
    `drip-body` / `drip-headers` (a byte every 0.2 s), `huge` (MBs until the client hangs up), `huge-declared` (the
    same under a Content-Length of 1.5 GB). It records (method, path, Authorization) of every request, and the bytes
    each streamed answer sent."""

    def __init__(self, mode: str = "ok", target: str | None = None, listing=None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.mode, self.target, self.listing, self.seen, self.sent, self.closed = mode, target, listing, [], [], False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.answer(self)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closed = True  # ends the streams still running
        self.server.shutdown()
        self.server.server_close()

    def answer(self, h):
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.seen.append((h.command, h.path, h.headers.get("Authorization")))
        mode = "ok" if h.path.endswith("/models") and self.mode != "redirect" else self.mode
        if mode == "redirect":
            h.send_response(302)
            h.send_header("Location", self.target + h.path)
            h.end_headers()
        elif mode == "ok":
            prompt = json.loads(body)["messages"][0]["content"] if body else ""
            text = "Yes" if "Answer Yes or No" in prompt else "the words w5 and w6"
            listing = {"data": [{"id": "fake"}]} if self.listing is None else self.listing
            self.reply(h, listing if h.path.endswith("/models") else {"choices": [{"message": {"content": text}}]})
        elif mode in ("500", "401"):
            h.send_error(int(mode))
        elif mode in ("html", "not-chat"):
            self.reply(h, b"<html><body>Bad gateway</body></html>" if mode == "html" else {"choices": "x"})
        elif mode == "garbage":
            h.wfile.write(os.urandom(512))
        else:
            self.stream(h, mode)

    def reply(self, h, value):
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def stream(self, h, mode):
        """Bytes until the client hangs up: slowly, or a lot of them."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += {"drip-body": b"Content-Length: 100000\r\n\r\n", "huge": b"Connection: close\r\n\r\n",
                 "huge-declared": b"Content-Length: 1500000000\r\n\r\n"}.get(mode, b"X-Slow: ")  # fmt: skip
        sent, chunk = 0, b" " * 65536
        try:
            h.wfile.write(head)
            while sent < 1_500_000_000 and not self.closed:
                slow = mode.startswith("drip")
                h.wfile.write(b"x" if slow else chunk)
                h.wfile.flush()
                sent += 1 if slow else len(chunk)
                time.sleep(0.2 if slow else 0)
        except OSError:  # the client hung up
            pass
        self.sent.append(sent)


@pytest.fixture
def llm():
    servers = []

    def start(mode="ok", **kwargs):
        servers.append(FakeLLM(mode, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_the_api_key_goes_only_to_the_host_the_user_named(llm):
    other = llm()  # another port of 127.0.0.1: another origin
    named = llm("redirect", target=other.url)
    request = urllib.request.Request(f"{named.url}/v1/models", headers={"Authorization": "Bearer sk-secret"})
    urllib.request.urlopen(request, timeout=10).read()  # the condition: plain urlopen hands the key to the other host
    assert other.seen == [("GET", "/v1/models", "Bearer sk-secret")]
    other.seen.clear(), named.seen.clear()
    refused = rf"redirected {named.url}/v1/models to {other.url}/v1/models, on another host; hf_sae does not follow"
    with pytest.raises(ExplainerError, match=refused):
        EndpointChat(named.url, api_key="sk-secret")
    assert named.seen == [("GET", "/v1/models", "Bearer sk-secret")] and other.seen == []

    named.mode = "ok"
    chat = EndpointChat(named.url, api_key="sk-secret")
    named.mode = "redirect"  # now the completions go elsewhere: the run stops, and the key stays
    with pytest.raises(ExplainerError, match=r"chat/completions to .* on another host; hf_sae does not follow it"):
        chat.generate(["Explain this."], 4)
    assert named.seen[-1] == ("POST", "/v1/chat/completions", "Bearer sk-secret") and other.seen == []


@pytest.mark.parametrize("fault", ["500", "401", "html", "garbage", "not-chat"])
def test_explanation_failures_are_not_recorded_and_a_rerun_retries_them(saved, llm, fault, monkeypatch, capsys):
    server = llm(fault)
    fired = [i for i in range(48) if saved.stats["count"][i] > 0][:3]
    flags = ["explain", "--sae", str(saved.path.parent), "--explainer_endpoint", server.url, "--explain_examples",
             "2", "--score_examples", "1", "--features", *map(str, fired)]  # fmt: skip
    assert main(flags) == 1  # the run says it failed, in one line
    err = capsys.readouterr().err
    assert "hf-sae explain: error: 3 of 3 features were not explained: the explainer's requests failed (" in err
    assert "the same command run again asks for them" in err and "Traceback" not in err
    assert any(path == "/v1/chat/completions" for _, path, _ in server.seen)  # the fault fired on the completions
    entries = load_features(saved.path.parent).explanations.get("features", {})
    assert not set(map(str, fired)) & set(entries)  # none recorded as explained, or as unusable
    server.mode = "ok"
    assert main(flags) == 0
    entries = load_features(saved.path.parent).explanations["features"]
    assert all(entries[str(i)]["status"] == "ok" and entries[str(i)]["explainer"] == "fake" for i in fired)


@pytest.mark.parametrize("mode", ["drip-body", "drip-headers", "huge", "huge-declared"])
def test_a_slow_or_huge_answer_is_cut_off(llm, mode):
    server = llm()
    chat = EndpointChat(server.url)
    chat.timeout = 2.0
    server.mode = mode
    start = time.monotonic()
    assert chat.generate(["Explain this."], 4) == [None]  # a failed request, not an answer
    assert time.monotonic() - start < 6
    late = mode.startswith("drip")
    assert ("TimeoutError: no complete answer" if late else "its answer is over 8,388,608 bytes") in chat.failures[-1]
    if not late:  # the condition: the server would have sent 1.5 GB; the client hung up after the cap
        wait_for(lambda: server.sent, timeout=10)
        assert 8 * 2**20 < server.sent[0] < 1_500_000_000


def test_a_listing_of_another_shape_is_one_clear_error(llm):
    for listing in ({"data": [1]}, {"data": "fake"}, [], {"models": []}):
        server = llm(listing=listing)
        with pytest.raises(ExplainerError, match=r"Expected an OpenAI-compatible server at --explainer_endpoint .*"):
            EndpointChat(server.url)
    with pytest.raises(ExplainerError, match=r"lists no models; name one with --explainer"):
        EndpointChat(llm(listing={"data": []}).url)


@pytest.mark.parametrize("damage", ["{", "\xff\xfe", "[1, 2]", '{"features": {"3": "w7 words"}}'])
def test_a_damaged_explanations_file_is_one_clear_error_in_explain_browse_and_the_app(saved, tmp_path, damage,
                                                                                        monkeypatch):  # fmt: skip
    (saved.path / EXPLANATIONS).write_bytes(damage.encode("latin-1"))
    message = r"explanations.json (is not valid JSON \(.*\)|does not hold .*): it is damaged. Restore it, or delete it"
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the error itself, not its one-line print
    with pytest.raises(FeatureMetadataError, match=message):
        main(["explain", "--sae", str(saved.path.parent), "--explainer_endpoint", "http://127.0.0.1:9"])
    with pytest.raises(FeatureMetadataError, match=message):
        main(["browse", "--sae", str(saved.path.parent), "--output_dir", str(tmp_path / "browser")])
    assert not (tmp_path / "browser").exists()
    pytest.importorskip("gradio", reason="needs Gradio: pip install -e '.[dev]'")
    from hf_sae.app import Explorer

    lm = make_tiny_lm("llama")
    with pytest.raises(FeatureMetadataError, match=message):
        Explorer(lm.model, tiny_tokenizer(), tiny_sae(lm.hidden_size, hookpoint=lm.blocks[1]),
                 FeatureMetadata.load(saved.path))  # fmt: skip


def test_the_built_in_explainer_is_named_as_useless_before_it_loads_and_another_is_not(monkeypatch, caplog, tmp_path):
    from hf_sae import explainers

    loaded = []

    def fake_load_model(name, device=None):  # records when the model would load, after the warning or not
        loaded.append((name, len([r for r in caplog.records if r.levelname == "WARNING"])))
        tokenizer = tiny_tokenizer()
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        return make_tiny_lm("llama").model, tokenizer

    monkeypatch.setattr(explainers, "load_model", fake_load_model)
    with caplog.at_level("WARNING", logger="hf_sae"):
        explainers.load_chat(None, None)
        explainers.load_chat("smollm2-135m-instruct", None)
        explainers.load_chat(str(tmp_path), None)  # a model of the user's own: no warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and loaded == [(None, 1), ("smollm2-135m-instruct", 2), (str(tmp_path), 2)]
    assert "built-in smollm2-135m-instruct" in warnings[0] and "score at chance" in warnings[0]
    assert "--explainer_endpoint http://127.0.0.1:8000/v1 --explainer MODEL" in warnings[0]
    assert "interpretability score" in warnings[0]


def test_the_chat_counts_each_generated_token_and_answer_on_the_progress_bar(saved, capsys):
    from tqdm import tqdm

    chat = TinyChat()
    settings = ExplainSettings(explain_examples=2, score_examples=2, max_new_tokens=4, fuzzing=False)
    explain_features(saved, chat, [0, 2], batch_size=2, settings=settings)
    err = capsys.readouterr().err
    assert "Writing 2 explanation(s), tokens" in err and "Scoring: questions answered" in err
    assert chat.progress is None  # unset after the run
    batch = chat._encode(["w5 w6 w7"])
    steps = chat.model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=chat.tokenizer.pad_token_id)
    chat.progress = bar = tqdm(total=0)
    LocalChat.generate(chat, ["w5 w6 w7"], 6)
    assert bar.total == 6 and bar.n == steps.shape[1] - batch["input_ids"].shape[1] >= 1
    LocalChat.yes_probability(chat, ["w5"] * 20)
    assert bar.total == bar.n == 20
