"""Hub tests: the real huggingface_hub client and transformers against the project's Hub-compatible test server.

The server (tests/hub_server.py) runs on 127.0.0.1 for this module. Other test modules import transformers, and so
huggingface_hub, before this one, so each test points the already imported client at the server with
`point_client_at` (patched constants, reset cached `HfApi`s) rather than with environment variables.
"""

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import torch
from hub_server import HubServer, client_env, point_client_at
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoModel

from hf_sae import HookpointError, SaeConfig, SaeModel, SaeNotFoundError, WeightsError
from hf_sae.errors import ArgumentError, FeatureMetadataError, HubError
from hf_sae.hub import load_saes, push_saes_to_hub, save_saes
from hf_sae.model_card import metrics_to_eval_results

ALICE, ALICE_READ, BOB = "hf_alice_write", "hf_alice_read", "hf_bob_write"
LAYERS = [f"model.layers.{i}" for i in (2, 10, 11)]
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M"
MB = 1024 * 1024
SAE_FILES = ("config.json", "model.safetensors")
# huggingface_hub 2.4 itself PUTs LFS content with httpx2's deprecated `data=`.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture(scope="module")
def hub_server():
    with HubServer() as server:
        yield server


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path) -> HubServer:
    hub_server.reset()
    hub_server.upload_mode = "lfs"
    point_client_at(monkeypatch, hub_server.url, tmp_path / "hf-home")
    return hub_server


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(token=ALICE)


def make_sae(hookpoint: str | None = None, d_in: int = 16, num_latents: int = 64, seed: int = 0) -> SaeModel:
    torch.manual_seed(seed)
    config = SaeConfig(d_in=d_in, num_latents=num_latents, architecture="topk", k=4, hookpoint=hookpoint,
                       base_model_name_or_path=BASE_MODEL)  # fmt: skip
    sae = SaeModel(config)
    with torch.no_grad():
        sae.b_enc.uniform_()  # not all zeros, so that a mix-up shows
    return sae


def assert_same(a: SaeModel, b: SaeModel) -> None:
    ignored = {"_name_or_path": None} | ({"hookpoint": None} if b.config.hookpoint is None else {})
    assert a.config.to_dict() | ignored == b.config.to_dict() | ignored
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def cached_files(hub_home: Path) -> list[str]:
    return sorted(str(p.relative_to(hub_home)) for p in hub_home.rglob("*") if p.is_file() or p.is_symlink())


def routes(hub: HubServer) -> list[str]:
    return [route for _, route, _ in hub.requests]


# ---- the server speaks the protocol the client expects --------------------------------------------------------------


def test_create_delete_and_exist_ok(api):
    assert api.create_repo("alice/repo").repo_id == "alice/repo"
    assert api.create_repo("alice/repo", exist_ok=True).repo_id == "alice/repo"
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo("alice/repo")
    assert info.value.response.status_code == 409
    assert api.list_repo_files("alice/repo") == [".gitattributes"]  # the Hub's initial commit
    api.delete_repo("alice/repo")
    assert not api.repo_exists("alice/repo")
    api.delete_repo("alice/repo", missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("alice/repo")


def test_regular_and_lfs_files_round_trip(api, hub):
    api.create_repo("alice/files")
    big = os.urandom(11 * MB)
    api.create_commit(
        "alice/files",
        [CommitOperationAdd("notes/a.txt", b"hello"), CommitOperationAdd("big.bin", big)],
        commit_message="add",
    )
    assert routes(hub).count("lfs-batch") == 1 and "storage-upload" in routes(hub) and "lfs-verify" in routes(hub)
    entries = {e.path: e for e in api.list_repo_tree("alice/files", recursive=True)}
    assert entries["big.bin"].lfs.size == len(big) and entries["notes/a.txt"].lfs is None
    assert "notes" in entries  # directories are listed too, as on the Hub
    assert Path(hf_hub_download("alice/files", "big.bin")).read_bytes() == big  # through the 302 to storage
    assert Path(hf_hub_download("alice/files", "notes/a.txt")).read_text() == "hello"
    assert api.file_exists("alice/files", "big.bin") and not api.file_exists("alice/files", "nope")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/files", "nope.txt")

    before = api.list_repo_commits("alice/files")
    api.upload_file(path_or_fileobj=big, path_in_repo="big.bin", repo_id="alice/files")  # unchanged: skipped
    assert len(api.list_repo_commits("alice/files")) == len(before)
    siblings = {s.rfilename: s for s in api.model_info("alice/files", files_metadata=True).siblings}
    assert siblings["big.bin"].lfs.size == len(big)


def test_regular_upload_mode_needs_no_lfs_or_xet(api, hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)  # Xet is never reached: every file is regular
    hub.upload_mode = "regular"
    api.create_repo("alice/regular")
    big = os.urandom(11 * MB)
    api.upload_file(path_or_fileobj=big, path_in_repo="model.safetensors", repo_id="alice/regular")
    assert not {"lfs-batch", "xet"} & set(routes(hub))
    assert Path(hf_hub_download("alice/regular", "model.safetensors")).read_bytes() == big


def test_branches_tags_and_revisions(api):
    api.create_repo("alice/revs")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="alice/revs").oid
    api.create_branch("alice/revs", branch="dev")
    api.create_branch("alice/revs", branch="dev", exist_ok=True)
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="alice/revs", revision="dev")
    api.create_tag("alice/revs", tag="v1.0", revision=first)
    refs = api.list_repo_refs("alice/revs")
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1.0"]
    for revision, expected in [("main", b"v1"), ("dev", b"v2"), ("v1.0", b"v1"), (first, b"v1"), (first[:7], b"v1")]:
        assert Path(hf_hub_download("alice/revs", "f.txt", revision=revision)).read_bytes() == expected
    assert len(api.list_repo_commits("alice/revs", revision="dev")) == 3
    assert api.revision_exists("alice/revs", "dev") and not api.revision_exists("alice/revs", "nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/revs", "f.txt", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/revs", revision="nope")
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="f.txt", repo_id="alice/revs", create_pr=True)
    assert pr.pr_revision == "refs/pr/1"
    assert Path(hf_hub_download("alice/revs", "f.txt", revision="refs/pr/1")).read_bytes() == b"pr"


def test_private_repo_needs_the_owners_token(api, tmp_path):
    api.create_repo("alice/secret", private=True)
    api.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id="alice/secret")
    for token, status in [(None, 401), (BOB, 404)]:
        with pytest.raises(RepositoryNotFoundError) as info:
            HfApi(token=token).model_info("alice/secret")
        assert info.value.response.status_code == status
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "s.txt")
    assert api.model_info("alice/secret").private
    folder = snapshot_download("alice/secret", token=ALICE_READ)
    assert (Path(folder) / "s.txt").read_bytes() == b"s"


def test_writes_need_a_write_token_for_the_namespace(api):
    api.create_repo("alice/public")
    upload = dict(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/public")
    for token, status in [(None, 401), ("hf_wrong", 401), (ALICE_READ, 403), (BOB, 403)]:
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(token=token).upload_file(**upload)
        assert info.value.response.status_code == status
    with pytest.raises(HfHubHTTPError):
        HfApi(token=BOB).create_repo("alice/bobs")
    assert api.create_repo("sae-lab/shared").repo_id == "sae-lab/shared"  # alice is a member of the organization
    assert api.list_repo_files("alice/public") == [".gitattributes"]


def test_commit_is_atomic(api, hub):
    api.create_repo("alice/atomic")
    head = api.model_info("alice/atomic").sha
    lines = [
        {"key": "header", "value": {"summary": "half a commit"}},
        {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"a").decode(), "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]
    response = httpx2.post(
        f"{hub.url}/api/models/alice/atomic/commit/main",
        content="\n".join(json.dumps(line) for line in lines).encode(),
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 422 and "never uploaded" in response.json()["error"]
    assert api.model_info("alice/atomic").sha == head and api.list_repo_files("alice/atomic") == [".gitattributes"]
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("missing.txt", "alice/atomic")
    assert api.model_info("alice/atomic").sha == head


def test_dataset_repos(api):
    api.create_repo("alice/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="train.csv", repo_id="alice/data", repo_type="dataset")
    assert Path(hf_hub_download("alice/data", "train.csv", repo_type="dataset")).read_bytes() == b"a,b\n"
    assert not api.repo_exists("alice/data")  # a model repo of that name does not exist


def test_env_vars_point_a_fresh_process_at_the_server(api, tmp_path):
    """The other setup: HF_ENDPOINT and friends set before huggingface_hub is imported (as for a CLI run)."""
    api.create_repo("alice/env")
    api.upload_file(path_or_fileobj=b"env", path_in_repo="e.txt", repo_id="alice/env")
    code = "from huggingface_hub import hf_hub_download; print(open(hf_hub_download('alice/env', 'e.txt')).read())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | client_env(api.endpoint, tmp_path / "x")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "env", result.stderr


# ---- transformers' own push_to_hub / from_pretrained ----------------------------------------------------------------


def test_single_sae_push_to_hub_and_from_pretrained(api, hub):
    sae = make_sae("model.layers.2")
    sae.push_to_hub("alice/single", token=ALICE)
    assert {"README.md", "config.json", "model.safetensors"} <= set(api.list_repo_files("alice/single"))
    assert_same(SaeModel.from_pretrained("alice/single"), sae)
    assert_same(AutoModel.from_pretrained("alice/single"), sae)
    loaded = load_saes("alice/single")
    assert list(loaded) == ["model.layers.2"]
    assert_same(loaded["model.layers.2"], sae)


def test_automodel_from_subfolder_at_a_revision(api):
    push_saes_to_hub("alice/saes", {LAYERS[0]: make_sae(seed=1)}, token=ALICE)
    new = make_sae(seed=2)
    commit = push_saes_to_hub("alice/saes", {LAYERS[0]: new}, token=ALICE, revision="v2")
    for revision in ("v2", commit.oid):
        assert_same(AutoModel.from_pretrained("alice/saes", subfolder=LAYERS[0], revision=revision), new)
    assert not torch.equal(AutoModel.from_pretrained("alice/saes", subfolder=LAYERS[0]).W_enc, new.W_enc)


# ---- save_saes / push_saes_to_hub / load_saes -----------------------------------------------------------------------


def test_save_and_load_locally(tmp_path):
    saes = {h: make_sae(h, seed=i) for i, h in enumerate(LAYERS)}
    out = save_saes(list(saes.values()), tmp_path / "out", metrics={LAYERS[0]: {"fvu": 0.2, "l0": 4.0}})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", *sorted(LAYERS)]
    assert json.loads((out / LAYERS[0] / "metrics.json").read_text()) == {"fvu": 0.2, "l0": 4.0}
    loaded = load_saes(out)
    assert list(loaded) == LAYERS  # natural order: layer 2 before layer 10
    for h in LAYERS:
        assert_same(loaded[h], saes[h])
    assert list(load_saes(out, LAYERS[1])) == [LAYERS[1]]
    assert load_saes(out, [LAYERS[0]], dtype=torch.bfloat16)[LAYERS[0]].W_enc.dtype == torch.bfloat16

    class Features:  # what a feature-metadata object offers
        def save_pretrained(self, path):
            Path(path).mkdir()
            (Path(path) / "stats.json").write_text("{}")

    save_saes({LAYERS[0]: loaded[LAYERS[0]]}, tmp_path / "copy")  # a loaded SAE keeps its metrics
    assert json.loads((tmp_path / "copy" / LAYERS[0] / "metrics.json").read_text())["fvu"] == 0.2
    save_saes({LAYERS[1]: saes[LAYERS[1]]}, tmp_path / "copy", features={LAYERS[1]: Features()})
    assert (tmp_path / "copy" / LAYERS[1] / "features" / "stats.json").is_file()
    single = tmp_path / "single"
    saes[LAYERS[0]].save_pretrained(single)
    assert_same(load_saes(single)[LAYERS[0]], saes[LAYERS[0]])


def test_save_keeps_what_was_saved_and_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out"
    save_saes({LAYERS[0]: make_sae(seed=0)}, out)
    newer = make_sae(seed=5)
    save_saes({LAYERS[1]: make_sae(seed=1), LAYERS[0]: newer}, out)
    assert list(load_saes(out)) == LAYERS[:2]
    assert_same(load_saes(out)[LAYERS[0]], newer)
    assert (
        "`model.layers.2`" in (out / "README.md").read_text()
        and "`model.layers.10`" in (out / "README.md").read_text()
    )

    before = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(Exception, match="should be a folder"):
        save_saes({LAYERS[0]: make_sae(seed=9), LAYERS[2]: make_sae()}, out, features={LAYERS[2]: tmp_path / "nope"})
    assert sorted(str(p) for p in out.rglob("*")) == before  # nothing half-written, nothing lost
    assert_same(load_saes(out)[LAYERS[0]], newer)
    real_rename = Path.rename

    def rename_failing_on_the_second_swap(self, target):
        if Path(target) == out / LAYERS[2]:
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_failing_on_the_second_swap)
    with pytest.raises(OSError, match="disk full"):
        save_saes({LAYERS[0]: make_sae(seed=9), LAYERS[2]: make_sae()}, out)  # the first swap is undone
    assert sorted(str(p) for p in out.rglob("*")) == before
    assert_same(load_saes(out)[LAYERS[0]], newer)
    with pytest.raises(Exception, match="trained on"):
        save_saes({LAYERS[1]: make_sae(LAYERS[0])}, out)


def test_push_many_in_one_commit_and_load_only_what_is_asked(api, hub, tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "labels.json").write_text('{"3": "the Golden Gate Bridge"}')
    big = make_sae(LAYERS[2], d_in=256, num_latents=8192, seed=3)  # 16 MB of fp32 weights: the LFS path
    saes = {LAYERS[0]: make_sae(seed=0), LAYERS[1]: make_sae(seed=1), LAYERS[2]: big}
    metrics = {LAYERS[0]: {"fvu": 0.21, "l0": 32.0, "dead_fraction": 0.01, "loss_recovered": 0.9, "kl_div": 0.1}}
    commits_before = len(api.list_repo_commits("alice/saes")) if api.repo_exists("alice/saes") else 0
    push_saes_to_hub("alice/saes", saes, token=ALICE, features={LAYERS[0]: features}, metrics=metrics,
                     datasets=["wikitext"], license="apache-2.0")  # fmt: skip
    assert routes(hub).count("commit") == 1 and routes(hub).count("lfs-batch") == 1
    assert len(api.list_repo_commits("alice/saes")) == commits_before + 2  # the initial commit and ours
    files = set(api.list_repo_files("alice/saes"))
    assert {f"{LAYERS[0]}/features/labels.json", f"{LAYERS[0]}/metrics.json", "README.md"} <= files
    big_file = next(e for e in api.list_repo_tree("alice/saes", LAYERS[2]) if e.path.endswith(".safetensors"))
    assert big_file.size > 10 * MB and big_file.lfs is not None

    hub.requests.clear()
    loaded = load_saes("alice/saes", [LAYERS[0]])
    assert list(loaded) == [LAYERS[0]]
    assert_same(loaded[LAYERS[0]], saes[LAYERS[0]])
    assert (Path(loaded[LAYERS[0]].name_or_path) / "features" / "labels.json").read_text().endswith('Bridge"}')
    downloaded = [path for method, route, path in hub.requests if route == "resolve" and method == "GET"]
    assert downloaded and all(f"/{LAYERS[0]}/" in path for path in downloaded)
    cache = cached_files(tmp_path / "hf-home" / "hub")
    snapshot = [p for p in cache if "/snapshots/" in p]
    assert snapshot and all(f"/{LAYERS[0]}/" in p for p in snapshot)
    assert not any(LAYERS[1] + "/" in p or LAYERS[2] + "/" in p for p in cache)
    assert_same(load_saes("alice/saes", LAYERS[2])[LAYERS[2]], big)


def test_push_a_training_run_folder(api, tmp_path):
    """A run's output folder as training writes it: SAE folders with their metrics, the run's report keyed by
    hookpoint, checkpoints, logs and arguments."""
    run = tmp_path / "run"
    saes = {LAYERS[0]: make_sae(LAYERS[0]), LAYERS[1]: make_sae(LAYERS[1], seed=1)}
    for hookpoint, sae in saes.items():
        sae.save_pretrained(run / hookpoint)
    report = {h: {"architecture": "topk", "train_tokens": 4096, "fvu": 0.25, "dead_fraction": 0.5} for h in saes}
    for hookpoint, metrics in report.items():
        (run / hookpoint / "metrics.json").write_text(json.dumps(metrics))
    (run / "metrics.json").write_text(json.dumps(report))
    (run / "training_args.json").write_text("{}")
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-10" / "model.safetensors").write_bytes(b"not an SAE")
    push_saes_to_hub("alice/run", run, token=ALICE)
    files = set(api.list_repo_files("alice/run"))
    assert files == {".gitattributes", "README.md", "training_args.json"} | {
        f"{h}/{f}" for h in saes for f in (*SAE_FILES, "metrics.json")
    }
    card = ModelCard.load("alice/run")
    assert {(r.dataset_config, r.metric_type) for r in card.data.eval_results} == {
        (h, m) for h in saes for m in ("fvu", "dead_fraction")
    }
    assert "4,096" in card.text


def test_offline_loads_come_from_the_cache(api, hub, monkeypatch):
    from huggingface_hub import constants

    push_saes_to_hub("alice/saes", {LAYERS[0]: make_sae(), LAYERS[1]: make_sae(seed=1)}, token=ALICE)
    online = load_saes("alice/saes", [LAYERS[0]])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    assert_same(load_saes("alice/saes", [LAYERS[0]])[LAYERS[0]], online[LAYERS[0]])
    assert hub.requests == []
    with pytest.raises(HubError, match="Could not download SAEs from 'alice/saes'"):
        load_saes("alice/saes", [LAYERS[1]])  # never downloaded


def test_model_card_metadata_parses_back(api):
    metrics = {LAYERS[0]: {"fvu": 0.21, "l0": 32.0, "dead_fraction": 0.01, "train_tokens": 2_000_000}}
    push_saes_to_hub("alice/carded", {LAYERS[0]: make_sae(), LAYERS[1]: make_sae()}, token=ALICE, metrics=metrics,
                     datasets=["wikitext"])  # fmt: skip
    card = ModelCard.load("alice/carded")
    assert card.data.library_name == "hf_sae" and card.data.base_model == BASE_MODEL
    assert {"sparse-autoencoder", "interpretability", "hf_sae", "topk"} <= set(card.data.tags)
    assert card.data.datasets == ["wikitext"]
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {(LAYERS[0], "fvu"): 0.21, (LAYERS[0], "l0"): 32.0, (LAYERS[0], "dead_fraction"): 0.01}
    assert {r.task_type for r in card.data.eval_results} == {"feature-extraction"}
    assert "2,000,000" in card.text and 'load_saes("alice/carded"' in card.text and "SaeHooks" in card.text


def test_second_push_keeps_other_hookpoints_and_drops_stale_files(api, tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "old.json").write_text("{}")
    push_saes_to_hub("alice/grow", {LAYERS[0]: make_sae()}, token=ALICE, features={LAYERS[0]: features},
                     metrics={LAYERS[0]: {"fvu": 0.3}})  # fmt: skip
    push_saes_to_hub("alice/grow", {LAYERS[0]: make_sae(seed=4), LAYERS[1]: make_sae()}, token=ALICE)
    files = set(api.list_repo_files("alice/grow"))
    assert f"{LAYERS[0]}/features/old.json" not in files and f"{LAYERS[1]}/config.json" in files
    push_saes_to_hub("alice/grow", {LAYERS[2]: make_sae()}, token=ALICE, metrics={LAYERS[2]: {"fvu": 0.5}})
    assert list(load_saes("alice/grow")) == LAYERS
    card = ModelCard.load("alice/grow")
    assert all(f"`{h}`" in card.text for h in LAYERS)
    assert {r.dataset_config for r in card.data.eval_results} == {LAYERS[2]}


def test_metrics_to_eval_results():
    results = metrics_to_eval_results(
        {LAYERS[0]: {"fvu": 0.2, "l0": 32, "train_tokens": 10, "note": "x"}, LAYERS[1]: {"kl_div": 0.1}},
        dataset="wikitext",
    )
    assert [(r.dataset_config, r.metric_type, r.metric_value) for r in results] == [
        (LAYERS[0], "fvu", 0.2), (LAYERS[0], "l0", 32.0), (LAYERS[1], "kl_div", 0.1),
    ]  # fmt: skip
    assert results[0].dataset_type == "wikitext" and results[0].metric_name == "Fraction of variance unexplained"
    assert [r.dataset_config for r in metrics_to_eval_results({"fvu": 0.2})] == [None]


# ---- failures -------------------------------------------------------------------------------------------------------


def test_failed_upload_leaves_no_commit_and_a_retry_works(api, hub):
    saes = {LAYERS[0]: make_sae(), LAYERS[1]: make_sae(seed=1)}
    push_saes_to_hub("alice/retry", {LAYERS[2]: make_sae()}, token=ALICE)
    head, files = api.model_info("alice/retry").sha, api.list_repo_files("alice/retry")
    hub.fail_next("storage-upload", 403, "Storage refused the upload")
    with pytest.raises(HubError, match="Storage refused the upload.*no part of this push"):
        push_saes_to_hub("alice/retry", saes, token=ALICE)
    assert api.model_info("alice/retry").sha == head and api.list_repo_files("alice/retry") == files
    push_saes_to_hub("alice/retry", saes, token=ALICE)
    assert list(load_saes("alice/retry")) == LAYERS


def test_invalid_sae_is_refused_before_any_upload(hub, tmp_path):
    out = save_saes({LAYERS[0]: make_sae(), LAYERS[1]: make_sae()}, tmp_path / "out")
    wrong = make_sae(num_latents=32)
    wrong.save_pretrained(tmp_path / "wrong")
    os.replace(tmp_path / "wrong" / "model.safetensors", out / LAYERS[1] / "model.safetensors")
    with pytest.raises(
        WeightsError, match=r"`W_enc` in the file has shape \(32, 16\) where its config expects \(64, 16\)"
    ):
        push_saes_to_hub("alice/invalid", out, token=ALICE)
    assert hub.requests == []  # not even the repo was created


def test_missing_repo_revision_and_hookpoint(api):
    with pytest.raises(HubError, match="'alice/nope' was not found"):
        load_saes("alice/nope")
    with pytest.raises(SaeNotFoundError, match="'./no/such/dir' does not exist .*not looked up on the Hub"):
        load_saes("./no/such/dir")  # a mistyped local path is never sent to the Hub
    push_saes_to_hub("alice/saes", {LAYERS[0]: make_sae(), LAYERS[1]: make_sae()}, token=ALICE)
    with pytest.raises(HubError, match="no revision 'v9'. Branches: main"):
        load_saes("alice/saes", revision="v9")
    with pytest.raises(HookpointError, match=r"\['model.layers.7'\].*model.layers.2, model.layers.10"):
        load_saes("alice/saes", ["model.layers.7"])


def test_private_sae_repo_needs_a_token(api):
    push_saes_to_hub("alice/private-saes", {LAYERS[0]: make_sae()}, token=ALICE, private=True)
    with pytest.raises(HubError, match="private"):
        load_saes("alice/private-saes")
    assert list(load_saes("alice/private-saes", token=ALICE_READ)) == [LAYERS[0]]


def test_missing_and_corrupt_files_are_clear_errors(api, tmp_path):
    api.create_repo("alice/broken")
    config = make_sae(LAYERS[0]).config.to_json_string()
    api.upload_file(path_or_fileobj=config.encode(), path_in_repo=f"{LAYERS[0]}/config.json", repo_id="alice/broken")
    with pytest.raises(WeightsError, match="has config.json but no model.safetensors"):
        load_saes("alice/broken")
    weights = tmp_path / "w"
    make_sae(LAYERS[0]).save_pretrained(weights)
    data = (weights / "model.safetensors").read_bytes()
    api.upload_file(path_or_fileobj=data[:-100], path_in_repo=f"{LAYERS[0]}/model.safetensors", repo_id="alice/broken")
    with pytest.raises(WeightsError, match="truncated"):
        load_saes("alice/broken")
    (weights / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_saes(weights)


def test_cli_push_and_pull(api, tmp_path):
    for hookpoint in LAYERS[:2]:
        make_sae(hookpoint).save_pretrained(tmp_path / "run" / hookpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | client_env(api.endpoint, tmp_path / "h")
    env["HF_TOKEN"] = ALICE

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "hf_sae.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    pushed = cli("push", "--sae", str(tmp_path / "run"), "--repo_id", "alice/cli-saes", "--private")
    assert pushed.returncode == 0, pushed.stderr
    assert "Pushed to" in pushed.stdout
    assert api.repo_info("alice/cli-saes").private
    pulled = cli("pull", "--repo_id", "alice/cli-saes", "--hookpoints", LAYERS[1], "--output_dir", str(tmp_path / "o"))
    assert pulled.returncode == 0, pulled.stderr
    assert f"{LAYERS[1]}: topk, 64 latents" in pulled.stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir()) == [LAYERS[1]]
    pulled_sae, original = SaeModel.from_pretrained(tmp_path / "o" / LAYERS[1]), make_sae(LAYERS[1])
    assert all(torch.equal(pulled_sae.state_dict()[k], v) for k, v in original.state_dict().items())
    env.pop("HF_TOKEN")
    refused = cli("pull", "--repo_id", "alice/cli-saes")
    assert refused.returncode != 0 and "alice/cli-saes" in refused.stderr


def test_save_pretrained_and_push_to_hub_write_hf_sae_s_card(api, tmp_path):
    sae = make_sae(LAYERS[0])
    sae.save_pretrained(tmp_path / "one")
    card = ModelCard.load(tmp_path / "one" / "README.md")
    assert card.data.library_name == "hf_sae" and card.data.base_model == BASE_MODEL
    assert "sparse-autoencoder" in card.data.tags and "More Information Needed" not in card.text
    commit = sae.push_to_hub("alice/one-sae", token=ALICE)
    assert commit.commit_url
    assert set(api.list_repo_files("alice/one-sae")) == {".gitattributes", "README.md", *SAE_FILES}
    pushed = ModelCard.load("alice/one-sae")
    assert pushed.data.library_name == "hf_sae" and pushed.data.base_model == BASE_MODEL
    assert_same(SaeModel.from_pretrained("alice/one-sae"), sae)


def test_save_pretrained_with_push_to_hub_uploads_hf_sae_s_card(api, tmp_path):
    sae = make_sae(LAYERS[0])
    sae.save_pretrained(tmp_path / "two", push_to_hub=True, repo_id="alice/two-sae", token=ALICE)
    assert set(api.list_repo_files("alice/two-sae")) == {".gitattributes", "README.md", *SAE_FILES}
    assert ModelCard.load("alice/two-sae").data.library_name == "hf_sae"  # not transformers' generic card
    assert_same(SaeModel.from_pretrained("alice/two-sae"), sae)
    with pytest.raises(TypeError, match=r"does not take \['max_shard_size'\]: .* datasets, license, tags"):
        sae.push_to_hub("alice/three-sae", token=ALICE, max_shard_size="1GB")
    assert api.repo_exists("alice/two-sae") and not api.repo_exists("alice/three-sae")  # refused before creating it


def test_arguments_of_the_wrong_kind_are_refused_naming_the_signature(api, tmp_path):
    from hf_sae import ArgumentError

    save_saes({LAYERS[0]: make_sae(LAYERS[0])}, tmp_path / "saes")
    with pytest.raises(ArgumentError, match=r"`repo_id` must be a Hub repo id .*push_saes_to_hub\(repo_id, saes_or"):
        push_saes_to_hub(str(tmp_path / "saes"), "alice/swapped", token=ALICE)
    with pytest.raises(ArgumentError, match=r"`hookpoints` must be a hookpoint name, a list of them or None .*got 1"):
        load_saes(tmp_path / "saes", 1)
    assert list(load_saes(tmp_path / "saes", (h for h in [LAYERS[0]]))) == [LAYERS[0]]  # any iterable of names


def test_hf_sae_push_takes_the_card_metadata(api, tmp_path, monkeypatch):
    from hf_sae.cli import main

    monkeypatch.setenv("HF_TOKEN", ALICE)
    save_saes({LAYERS[0]: make_sae(LAYERS[0])}, tmp_path / "run")
    argv = ["push", "--sae", str(tmp_path / "run"), "--repo_id", "alice/flagged", "--datasets", "wikitext",
            "--license", "apache-2.0", "--tags", "my-tag", "--token", ALICE]  # fmt: skip
    assert main(argv) == 0
    card = ModelCard.load("alice/flagged")
    assert card.data.datasets == ["wikitext"] and card.data.license == "apache-2.0" and "my-tag" in card.data.tags
    assert card.data.base_model == BASE_MODEL and card.data.base_model_relation == "adapter"


def test_the_readmes_hub_layout_is_what_a_push_writes(api, tmp_path):
    block = (Path(__file__).parents[1] / "docs" / "formats.md").read_text().split("## The Hub layout")[1]
    block = block.split("```")[1]
    names = [line.split("── ")[1].split()[0] for line in block.splitlines() if "── " in line]
    feature_files = re.findall(r"\w+\.(?:parquet|json)", block.split("features`: ")[1])
    run = tmp_path / "run"
    make_sae("model.layers.15").save_pretrained(run / "model.layers.15")
    (run / "training_args.json").write_text('{"learning_rate": 0.001}')
    (run / "model.layers.15" / "metrics.json").write_text('{"fvu": 0.2}')
    (run / "model.layers.15" / "features").mkdir()
    for name in feature_files:
        (run / "model.layers.15" / "features" / name).write_text("{}")
    push_saes_to_hub("alice/layout", run, token=ALICE)
    expected = {"README.md", "training_args.json"} | {f"model.layers.15/{n}" for n in names[3:] if not n.endswith("/")}
    expected |= {f"model.layers.15/features/{name}" for name in feature_files}
    assert names[:3] == ["README.md", "training_args.json", "model.layers.15/"] and len(expected) == 12
    assert set(api.list_repo_files("alice/layout")) - {".gitattributes"} == expected


def test_a_skip_transcoder_pushes_and_loads_by_its_input_hookpoint_with_its_card(api, hub):
    pair = {"hookpoint": "model.layers.2.mlp.input", "output_hookpoint": "model.layers.2.mlp"}
    config = SaeConfig(
        d_in=16, d_out=12, num_latents=64, k=4, skip_connection=True, apply_b_dec_to_input=False, **pair
    )
    torch.manual_seed(0)
    transcoder = SaeModel(config)
    with torch.no_grad():
        for tensor in transcoder.parameters():
            tensor.normal_()
    push_saes_to_hub("alice/transcoders", [transcoder], token=ALICE)
    loaded = load_saes("alice/transcoders", ["model.layers.2.mlp.input"])["model.layers.2.mlp.input"]
    assert (loaded.config.output_hookpoint, loaded.config.d_out, loaded.config.skip_connection) == (
        "model.layers.2.mlp",
        12,
        True,
    )
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in transcoder.state_dict().items())
    card = ModelCard.load("alice/transcoders", token=ALICE).text
    assert "skip transcoder to `model.layers.2.mlp`" in card


# ---- nothing written outside the folder, nothing pushed from outside it ---------------------------------------------


@pytest.mark.parametrize("name", ["../victim", "a/b", "a\\b", ".hidden", "..", "", "x" * 256, "README.md", "a\x00"])
def test_a_hookpoint_that_is_no_folder_name_is_refused_and_nothing_is_written(tmp_path, name):
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("kept")
    if name == "../victim":  # the condition: the name really points at the folder beside the output
        assert (tmp_path / "out" / name).resolve() == (tmp_path / "victim").resolve()
    with pytest.raises(HookpointError, match=r"must be a folder name|clashes with 'README.md'"):
        save_saes({name: make_sae()}, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "victim"]  # refused before anything


def test_module_paths_are_folder_names():
    from hf_sae.layout import hookpoint_folder

    for name in ("model.layers.6", "transformer.h.3.input", "model.layers.4.mlp", "sae"):
        assert hookpoint_folder(name) == name


def test_a_push_refuses_symbolic_links_and_says_which(api, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("hf_the_users_real_token")
    out = save_saes({LAYERS[0]: make_sae(LAYERS[0]), LAYERS[1]: make_sae(LAYERS[1])}, tmp_path / "out")
    single = tmp_path / "single"
    make_sae(LAYERS[0]).save_pretrained(single)
    elsewhere = save_saes({LAYERS[2]: make_sae(LAYERS[2])}, tmp_path / "elsewhere") / LAYERS[2]
    cases = {  # a link to the token inside an SAE folder, in a single SAE, as the card, or as a whole SAE folder
        "features": (out, out / LAYERS[0] / "features" / "notes.txt", secret),
        "single": (single, single / "notes.txt", secret),
        "card": (out, out / "README.md", secret),
        "folder": (out, out / LAYERS[2], elsewhere),
    }
    for case, (folder, link, target) in cases.items():
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        assert link.exists() and link.is_symlink()  # the condition: `is_file()` / `rglob` would take it in
        refused = rf"Pushing .*{folder.name} refused, nothing was uploaded: it holds symbolic links \(.*{link.name}\)"
        with pytest.raises(HubError, match=refused + ", which could point to any file"):
            push_saes_to_hub(f"alice/leak-{case}", folder, token=ALICE)
        assert not api.repo_exists(f"alice/leak-{case}"), case
        link.unlink()
    push_saes_to_hub("alice/leak-features", out, token=ALICE)  # without the links, the same folder goes
    assert f"{LAYERS[0]}/config.json" in api.list_repo_files("alice/leak-features")


def test_a_corrupt_cached_download_is_fetched_again_with_force_download(api, hub):
    sae = make_sae("model.layers.2")
    sae.push_to_hub("alice/cached", token=ALICE)
    weights = Path(SaeModel.from_pretrained("alice/cached").name_or_path) / "model.safetensors"
    blob = weights.resolve()
    blob.write_bytes(blob.read_bytes()[:-100])  # the cached copy is now truncated
    with pytest.raises(WeightsError, match=r"truncated.*`force_download=True`"):
        SaeModel.from_pretrained("alice/cached")
    hub.requests.clear()
    assert_same(SaeModel.from_pretrained("alice/cached", force_download=True), sae)
    assert any(route == "resolve" and method == "GET" for method, route, _ in hub.requests)  # really downloaded


# ---- cross-layer transcoders and circuit-tracer folders on the Hub --------------------------------------------------


def test_a_clt_pushes_and_loads_back_with_a_card_that_says_what_it_is(api, tmp_path, capsys):
    from test_load_transcoders import assert_equal_tensors, random_clt

    from hf_sae import CltModel, load_transcoders
    from hf_sae.cli import main

    clt = random_clt()
    clt.push_to_hub("alice/clt", token=ALICE)
    assert_equal_tensors(CltModel.from_pretrained("alice/clt"), clt)
    clt.save_pretrained(tmp_path / "clt")
    (tmp_path / "clt" / "features" / "layer_0").mkdir(parents=True)  # feature metadata is uploaded with it,
    (tmp_path / "clt" / "features" / "layer_0" / "labels.json").write_text('{"3": "a label"}')
    (tmp_path / "clt" / "training_args.json").write_text("{}")  # a training run's arguments are not
    pushed = main(["push", "--sae", str(tmp_path / "clt"), "--repo_id", "alice/clt-cli", "--token", ALICE,
                   "--license", "apache-2.0"])  # fmt: skip
    assert pushed == 0, capsys.readouterr().err
    repo_files = {".gitattributes", "README.md", "config.json", "model.safetensors", "features/layer_0/labels.json"}
    assert set(api.list_repo_files("alice/clt-cli")) == repo_files
    card = ModelCard.load(hf_hub_download("alice/clt-cli", "README.md"))
    assert "A cross-layer transcoder (CLT) over the 3 layers" in card.text and "CltModel.from_pretrained" in card.text
    assert "Feature metadata is included for 1 layer (`features/`)" in card.text
    assert card.data.library_name == "hf_sae" and card.data.license == "apache-2.0"
    assert {"cross-layer-transcoder", "jumprelu"} <= set(card.data.tags)
    loaded = load_transcoders("alice/clt-cli")
    assert isinstance(loaded, CltModel)
    assert_equal_tensors(loaded, clt)


def test_circuit_tracer_folders_load_from_the_hub(api):
    from test_circuit_tracer import FIXTURES
    from test_load_transcoders import assert_equal_tensors

    from hf_sae import CltModel, load_transcoders

    for name in ("set_jumprelu_skip", "clt_jumprelu"):
        api.create_repo(f"alice/{name}")
        api.upload_folder(repo_id=f"alice/{name}", folder_path=FIXTURES / name,
                          allow_patterns=["config.yaml", "layer_*", "W_*"])  # fmt: skip
    local, remote = load_transcoders(FIXTURES / "set_jumprelu_skip"), load_transcoders("alice/set_jumprelu_skip")
    assert list(remote) == [0, 1, 2] and remote[0].config.skip_connection
    for layer in local:
        assert_equal_tensors(remote[layer], local[layer])
    saes = load_saes("alice/set_jumprelu_skip", hookpoints=["model.layers.1.mlp.input"])
    assert_equal_tensors(saes["model.layers.1.mlp.input"], local[1])
    clt = load_transcoders("alice/clt_jumprelu")
    assert isinstance(clt, CltModel)
    assert_equal_tensors(clt, load_transcoders(FIXTURES / "clt_jumprelu"))
    with pytest.raises(
        SaeNotFoundError, match=r"holds a cross-layer transcoder.*load_transcoders\('alice/clt_jumprelu'\)"
    ):
        load_saes("alice/clt_jumprelu")


# ---- one SAE of several from the Hub: its features, and AutoModel's hint ---------------------------------------


def test_one_hub_sae_by_subfolder_downloads_its_features_when_first_asked(api, hub, tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "metadata.json").write_text('{"num_tokens": 1000}')
    (features / "labels.json").write_text('{"3": "the Golden Gate Bridge"}')
    push_saes_to_hub("alice/featured", {LAYERS[0]: make_sae(), LAYERS[1]: make_sae(seed=1)}, token=ALICE,
                     features={LAYERS[0]: features})  # fmt: skip
    sae = SaeModel.from_pretrained("alice/featured", subfolder=LAYERS[0])
    snapshot = Path(sae.name_or_path)
    assert not (snapshot / "features").exists()  # only the config and weights came with the SAE
    hub.requests.clear()
    assert sae.features.labels == {3: "the Golden Gate Bridge"} and sae.features.metadata == {"num_tokens": 1000}
    assert sae.features.path == snapshot / "features"
    fetched = [path for method, route, path in hub.requests if route == "resolve" and method == "GET"]
    assert fetched and all(f"/{LAYERS[0]}/features/" in path for path in fetched)
    with pytest.raises(FeatureMetadataError, match=rf"repo 'alice/featured' holds no feature metadata for the "
                                                    rf"SAE at {LAYERS[1]}/ \(no {LAYERS[1]}/features/\)"):  # fmt: skip
        SaeModel.from_pretrained("alice/featured", subfolder=LAYERS[1]).features


def test_automodel_on_a_hub_repo_of_several_saes_names_them_and_subfolder(api, hub):
    push_saes_to_hub("alice/several", {LAYERS[0]: make_sae(), LAYERS[1]: make_sae(seed=1)}, token=ALICE)
    expected = (
        rf"No config.json in repo 'alice/several' at its top: it holds several SAEs, one per folder: {LAYERS[0]}, "
    )
    with pytest.raises(ArgumentError, match=expected + rf"{LAYERS[1]}\. Name the one with `subfolder=`"):
        AutoModel.from_pretrained("alice/several")


# ---- what a Hub visitor gets: every push carries metrics, features, training arguments and a card that says them ----

RUN_METRICS = {"architecture": "topk", "train_tokens": 4096, "fvu": 0.25, "l0": 4.0, "dense_fraction": 0.125,
               "datasets": ["built-in corpus"],
               "per_source": {"brown": {"fvu": 0.2}, "parliament": {"fvu": 0.3}}}  # fmt: skip


def training_run(folder: Path, hookpoints: list[str]) -> Path:
    """A training run's output as `hf-sae train` leaves it: SAE folders with metrics.json and features/, the run's
    training_args.json (every default argument, as `settings_of` records them) and a checkpoint."""
    import pyarrow as pa

    from hf_sae.arguments import TRAIN_GROUPS
    from hf_sae.feature_store import FeatureMetadata
    from hf_sae.fields import settings_of

    for seed, hookpoint in enumerate(hookpoints):
        make_sae(hookpoint, seed=seed).save_pretrained(folder / hookpoint)
        (folder / hookpoint / "metrics.json").write_text(json.dumps(RUN_METRICS))
        stats = pa.table({"feature": pa.array(range(64), pa.int32()), "auto_label": pa.array([""] * 64)})
        examples = pa.table({"feature": pa.array([], pa.int32()), "rank": pa.array([], pa.int16())})
        FeatureMetadata(stats, examples, {"num_latents": 64}).save_pretrained(folder / hookpoint / "features")
    settings = settings_of(*(group() for group in TRAIN_GROUPS)) | {
        "hookpoints": hookpoints,
        "learning_rate": 3e-4,
        "train_tokens": 1_000_000,
    }  # as a run resolves it
    (folder / "training_args.json").write_text(json.dumps(settings))
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "state.bin").write_bytes(b"not pushed")
    return folder


def assert_visitor_card(text: str, repo_id: str, subfolder: str | None = None) -> None:
    """The card names how to install and load, the metrics readably, the text with its sources, and the run's
    hyperparameters."""
    assert "pip install hf-sae" in text
    load = f'SaeModel.from_pretrained("{repo_id}"' + (f', subfolder="{subfolder}")' if subfolder else ")")
    assert load in text
    assert "Dense latents (fire on > 10% of tokens)" in text and "| 0.125 |" in text
    assert "Fraction of variance unexplained" in text and "dense_fraction |" not in text
    assert "Trained on hf_sae's built-in corpus of English prose: the Brown corpus" in text
    assert "parliament debates (1k UK House of Commons speeches" in text  # per-source names, readable
    assert "`built-in corpus`" not in text
    assert "| `learning_rate` | 0.0003 |" in text and "| `train_tokens` | 1000000 |" in text
    assert "No evaluation metrics" not in text and "No training arguments" not in text and "No feature" not in text


def test_push_to_hub_and_cli_push_of_one_sae_carry_the_same_files_and_card(api, tmp_path):
    """`SaeModel.push_to_hub` on an SAE loaded from a run's hookpoint folder, and `hf-sae push` of that folder."""
    from hf_sae.cli import main

    run = training_run(tmp_path / "run", [LAYERS[0]])
    SaeModel.from_pretrained(run / LAYERS[0]).push_to_hub("alice/one", token=ALICE)
    assert main(["push", "--sae", str(run / LAYERS[0]), "--repo_id", "alice/one-cli", "--token", ALICE]) == 0
    features = {f"features/{name}" for name in ("stats.parquet", "examples.parquet", "labels.json", "metadata.json")}
    expected = {".gitattributes", "README.md", *SAE_FILES, "metrics.json", "training_args.json", *features}
    cards = {}
    for repo in ("alice/one", "alice/one-cli"):
        assert set(api.list_repo_files(repo)) == expected
        folder = Path(snapshot_download(repo, token=ALICE))
        assert json.loads((folder / "metrics.json").read_text()) == RUN_METRICS
        assert json.loads((folder / "training_args.json").read_text()) == json.loads(
            (run / "training_args.json").read_text()
        )
        assert SaeModel.from_pretrained(folder).features.metadata == {"num_latents": 64}
        cards[repo] = ModelCard.load(repo, token=ALICE).text
        assert_visitor_card(cards[repo], repo)
    assert cards["alice/one"] == cards["alice/one-cli"].replace("one-cli", "one")  # the repo name aside


def test_push_of_a_run_carries_its_arguments_at_the_top_and_not_its_checkpoints(api, tmp_path):
    run = training_run(tmp_path / "run", LAYERS[:2])
    push_saes_to_hub("alice/run-args", run, token=ALICE)
    files = set(api.list_repo_files("alice/run-args"))
    assert "training_args.json" in files and not any(f.startswith("checkpoint-") for f in files)
    assert {f"{h}/features/metadata.json" for h in LAYERS[:2]} <= files
    assert_visitor_card(ModelCard.load("alice/run-args", token=ALICE).text, "alice/run-args", subfolder=LAYERS[0])


def test_push_of_an_sae_built_in_memory_says_what_it_lacks(api, tmp_path):
    make_sae(LAYERS[0]).push_to_hub("alice/bare", token=ALICE)
    assert set(api.list_repo_files("alice/bare")) == {".gitattributes", "README.md", *SAE_FILES}
    text = ModelCard.load("alice/bare", token=ALICE).text
    assert "pip install hf-sae" in text and 'SaeModel.from_pretrained("alice/bare")' in text
    assert "No evaluation metrics were saved with this SAE: run `hf-sae eval`" in text
    assert "No training arguments were saved with this SAE." in text
    assert "No feature metadata (`features/`) was saved with this SAE: collect it with\n`hf-sae features`" in text
