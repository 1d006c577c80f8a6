"""The static feature browser, checked in real headless Chromium (Debian's chromium and chromium-driver)."""

import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_features import collect, make_tiny_lm, tiny_sae, tiny_tokenizer, token_blocks

from hf_sae.browser import write_browser
from hf_sae.errors import HfSaeError
from hf_sae.feature_store import FeatureMetadata
from hf_sae.features import FeatureCollector, build_tables

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--window-size=1400,900")  # fmt: skip


def _find_chromium() -> tuple[str | None, str | None]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="module")
def chrome():
    """A headless Chromium driven through ChromeDriver; installed with apt-get when missing and run as root."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'")
    browser, driver = _find_chromium()
    if (browser is None or driver is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["sh", "-c", INSTALL], capture_output=True, timeout=900, env={**os.environ,
                       "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        browser, driver = _find_chromium()
    if browser is None or driver is None:
        pytest.skip(f"needs Chromium and ChromeDriver, found chromium={browser}, chromedriver={driver}; "
                    f"install them with `{INSTALL}`")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield session
    session.quit()


@pytest.fixture(scope="module")
def features() -> FeatureMetadata:
    lm = make_tiny_lm("llama")
    features = collect(lm.model, tiny_tokenizer(), tiny_sae(24), token_blocks(num_blocks=16))
    features.set_label(5, "zebra crossing")
    features.set_label(17, "Zebra stripes <b>not bold</b> <!--<script>")  # markup in a label must show as text
    return features


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the page")
        time.sleep(0.05)
    return value


def heading(chrome) -> str | None:
    """The feature view's title, or None while it is not rendered yet."""
    found = chrome.find_elements("css selector", "main h2")
    return found[0].text if found else None


def rows(chrome) -> list[int]:
    return [int(row.get_attribute("data-feature")) for row in chrome.find_elements("css selector", "#list .row")]


def test_browser_in_headless_chromium(chrome, features, tmp_path):
    index = write_browser(features, tmp_path / "browser", examples=5, chunk_size=16)
    assert sorted(p.name for p in (tmp_path / "browser" / "data").iterdir()) == ["f0000.js", "f0001.js", "f0002.js"]
    chrome.get(index.as_uri())
    wait_for(lambda: len(rows(chrome)) == 48)
    shown_score = [-1 if math.isnan(x) else float(f"{x:.2g}") for x in features.stats["interpretability"]]
    by_score = lambda ids: sorted(ids, key=lambda i: (-shown_score[i], i))  # noqa: E731 (best first, then by id)
    assert rows(chrome) == by_score(range(48))
    assert chrome.find_element("id", "count").text == "48 of 48 features"

    search = chrome.find_element("id", "search")
    search.send_keys("zebra")
    wait_for(lambda: rows(chrome) == by_score([5, 17]))
    search.clear()
    search.send_keys("#17")
    wait_for(lambda: rows(chrome) == [17])
    stats, examples = features.stats, features.examples()
    term = examples["tokens"][0][examples["peak"][0]]  # search looks in labels, ids, peak and promoted tokens
    peaks = {i: set() for i in range(48)}
    for f, rank, tokens, peak in zip(examples["feature"], examples["rank"], examples["tokens"], examples["peak"]):
        if rank < 5:
            peaks[f].add(tokens[peak])
    words = {i: [f"#{i}", features.label(i), *peaks[i], *stats["promoted_tokens"][i][:5]] for i in range(48)}
    expected = by_score([i for i in range(48) if term in " ".join(words[i]).lower()])
    search.clear()
    search.send_keys(term)
    wait_for(lambda: rows(chrome) == expected)

    search.clear()
    search.send_keys(" ")
    chrome.find_element("css selector", "#sort option[value=max]").click()
    wait_for(lambda: rows(chrome)[0] == int(stats["max_activation"].idxmax()))

    chrome.find_element("css selector", f'#list .row[data-feature="{rows(chrome)[1]}"]').click()
    shown = rows(chrome)[1]
    wait_for(lambda: heading(chrome) == f"Feature {shown}" and chrome.find_elements("css selector", "#contexts .ctx"))
    assert len(chrome.find_elements("css selector", "#contexts .ctx")) == min(5, len(features[shown].examples))
    assert chrome.find_elements("css selector", "main svg rect.bar")
    assert len(chrome.find_elements("css selector", "table.logits tr")) == 20  # 10 promoted, 10 suppressed
    peak = chrome.find_element("css selector", "#contexts .ctx .tok.peak")  # the top activation: full colour
    red, green, blue, alpha = re.findall(r"[\d.]+", peak.value_of_css_property("background-color"))
    assert (red, green, blue) == ("232", "89", "12") and float(alpha) > 0.95

    assert chrome.find_element("css selector", "main .stats").text.count("robust peak") == 1
    assert f"interpretability\n{shown_score[shown]:g}" in chrome.find_element("css selector", "main .stats").text
    dense = [i for i in range(48) if features.stats["dense"][i]]
    assert ("dense" in chrome.find_element("css selector", "main").text) == (shown in dense)
    meta = chrome.find_element("id", "meta").text
    assert 'labels below 0.5 read "no clear pattern"' in meta and "harmonic mean" in meta
    sampled = features[shown].quantile_examples
    assert len(chrome.find_elements("css selector", "#quantiles .ctx")) == len(sampled) > 0
    bins = [b.text for b in chrome.find_elements("css selector", "#quantiles .bin")]
    assert len(bins) == len({e["bin"] for e in sampled}) and bins[0].startswith(
        f"Decile {max(e['bin'] for e in sampled) + 1} "
    )
    shown_acts = [float(a.text) for a in chrome.find_elements("css selector", "#quantiles .ctx .act")]
    assert shown_acts[0] == pytest.approx(max(e["activation"] for e in sampled), rel=1e-3)
    counts = [c for c in features.stats["logit_histogram"][shown] if c]  # one bar per occupied bin
    assert len(chrome.find_elements("css selector", "#logit-histogram rect.bar")) == len(
        features.stats["logit_histogram"][shown]
    )
    assert sum(counts) == 99
    links = chrome.find_elements("css selector", "#neighbours a")
    assert [int(a.get_attribute("data-feature")) for a in links] == list(features[shown].neighbour_ids)
    links[0].click()
    wait_for(lambda: heading(chrome) == f"Feature {features[shown].neighbour_ids[0]}")

    chrome.execute_script("location.hash = '#17'")
    wait_for(lambda: heading(chrome) == "Feature 17")
    assert chrome.find_element("id", "feature-label").text == "Zebra stripes <b>not bold</b> <!--<script>"
    chrome.execute_script("location.hash = '#5'")
    wait_for(lambda: heading(chrome) == "Feature 5")

    errors = [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    chrome.save_screenshot(str(ARTIFACTS / "browser.png"))


def test_page_is_self_contained_and_never_replaces_other_files(features, tmp_path):
    index = write_browser(features, tmp_path / "browser")
    html = index.read_text()
    assert not re.findall(r"""(?:src|href)=["'](?!data:)[a-z]+:""", html)  # no network, no CDN
    assert re.findall(r"https?://", html) == ["http://"]  # only the SVG namespace name
    # A label cannot close the script element, nor open a comment or a script in it: markup is escaped as \u003c.
    assert "<b>not bold" not in html and "\\u003cb\\u003enot bold\\u003c/b\\u003e" in html
    write_browser(features, tmp_path / "browser")  # an earlier browser is replaced
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HfSaeError, match="other files"):
        write_browser(features, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def big_browser(tmp_path_factory) -> Path:
    """A browser for 16,384 features, from the collector fed with random latents."""
    collector = FeatureCollector(16384, top_n=10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        z = torch.rand(2, 128, 16384, generator=generator).sub_(0.97).relu_()  # about 3% of latents fire per token
        collector.update(z, torch.randint(3, 99, (2, 128), generator=generator), torch.ones(2, 128, dtype=torch.bool))
    stats, examples, _ = build_tables(collector, None, {i: f"w{i}" for i in range(99)})
    metadata = {"num_latents": 16384, "histogram_edges": collector.edges.tolist(), "quantiles": [0.5, 0.9, 0.99]}
    return write_browser(FeatureMetadata(stats, examples, metadata), tmp_path_factory.mktemp("big") / "browser")


def test_sixteen_thousand_features_stay_small(big_browser):
    """The list of 16,384 features is inline; their contexts are split into chunks loaded on demand."""
    assert big_browser.stat().st_size < 3_000_000
    chunks = list((big_browser.parent / "data").iterdir())
    assert len(chunks) == 64 and max(p.stat().st_size for p in chunks) < 1_000_000


def test_sixteen_thousand_features_in_chromium(chrome, big_browser):
    chrome.get(big_browser.as_uri() + "#16000")
    wait_for(lambda: len(rows(chrome)) == 100)  # the list is paged
    wait_for(lambda: heading(chrome) == "Feature 16000" and chrome.find_elements("css selector", "#contexts .ctx"))
    assert chrome.find_element("id", "page").text == "page 1 of 164"
    chrome.find_element("css selector", "#sort option[value=id]").click()  # by default: by interpretability score
    chrome.find_element("id", "search").send_keys("#1638")
    wait_for(lambda: rows(chrome) == [1638, *range(16380, 16384)])
    assert [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"] == []
