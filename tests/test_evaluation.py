import json
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, save_tiny_llama_and_corpus

from hf_sae import HfSaeError, SaeConfig, SaeModel
from hf_sae.cli import main
from hf_sae.evaluation import evaluate_saes, reconstruction_metric_path, report_to_eval_results

HOOKPOINT = "model.layers.1"
SPECIAL = (PAD_ID, BOS_ID, EOS_ID)
LM_KEYS = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated", "ce_loss_mean_ablated", "kl_div")


@pytest.fixture
def blocks() -> torch.Tensor:
    """(12, 20) token blocks, BOS first, with a few EOS tokens inside (special: left out like position 0)."""
    ids = torch.randint(3, VOCAB_SIZE, (12, 20), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = BOS_ID
    ids[3, 7] = ids[8, 15] = EOS_ID
    return ids


def relu_sae(d_in: int, W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> SaeModel:  # noqa: N803
    config = SaeConfig(d_in=d_in, num_latents=W_enc.shape[0], architecture="relu", apply_b_dec_to_input=False,
                       hookpoint=HOOKPOINT)  # fmt: skip
    sae = SaeModel(config).eval()
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.zeros(d_in) if b_dec is None else b_dec)
    return sae


def exact_sae(d_in: int) -> SaeModel:
    """relu([x; -x]) decoded by [I; -I] gives x back exactly: relu(x) - relu(-x)."""
    eye = torch.eye(d_in)
    return relu_sae(d_in, torch.cat([eye, -eye]), torch.cat([eye, -eye]))


def evaluate(lm, sae, blocks, **kwargs) -> dict:
    return evaluate_saes(lm.model, {HOOKPOINT: sae}, blocks, exclude_token_ids=SPECIAL, **kwargs)[HOOKPOINT]


# ---- a direct computation on the same tensors, written independently of the library ---------------------------------


def kept_tokens(blocks: torch.Tensor, acts: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    keep = torch.ones_like(blocks, dtype=torch.bool)
    keep[:, 0] = False
    for special in SPECIAL:
        keep &= blocks != special
    for row in range(blocks.shape[0]):
        norms = acts[row].norm(dim=-1)
        keep[row] &= norms <= factor * norms[keep[row]].median()
    return keep


def logits_with(lm, blocks: torch.Tensor, replace=None) -> torch.Tensor:
    """Logits, with `replace(activation)` as the output of block 1 when given."""
    layer = lm.model.model.layers[1]
    handle = layer.register_forward_hook(lambda module, args, output: replace(output)) if replace else None
    try:
        with torch.no_grad():
            return lm.model(blocks).logits
    finally:
        if handle:
            handle.remove()


def direct_metrics(lm, sae: SaeModel, blocks: torch.Tensor) -> dict:
    with torch.no_grad():
        acts = {}
        logits_with(lm, blocks, lambda output: acts.setdefault("x", output))
        keep = kept_tokens(blocks, acts["x"])
        x = acts["x"][keep]
        out = sae(x)
        x_hat, fired = out.reconstruction, out.latents != 0
    x64, r64 = x.double(), x_hat.double()
    result = {
        "fvu": ((r64 - x64).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum()).item(),
        "mse": F.mse_loss(r64, x64).item(),
        "cosine_similarity": F.cosine_similarity(r64, x64, dim=-1).mean().item(),
        "norm_ratio": (r64.norm(dim=-1) / x64.norm(dim=-1)).mean().item(),
        "l0": fired.sum(-1).double().mean().item(),
        "dead_fraction": (~fired.any(0)).double().mean().item(),
        "dense_fraction": (fired.double().mean(0) > 0.1).double().mean().item(),
        "eval_tokens": x.shape[0],
    }
    result["explained_variance"] = 1 - result["fvu"]
    predicting, targets = keep[:, :-1], blocks[:, 1:][keep[:, :-1]]

    def patched(values):
        def replace(output):
            patched_output = output.clone()
            patched_output[keep] = values
            return patched_output

        return logits_with(lm, blocks, replace)[:, :-1][predicting].double()

    clean = logits_with(lm, blocks)[:, :-1][predicting].double()
    runs = {"clean": clean, "spliced": patched(x_hat), "zero_ablated": patched(torch.zeros_like(x)),
            "mean_ablated": patched(x64.mean(0).float())}  # fmt: skip
    for run, logits in runs.items():
        result[f"ce_loss_{run}"] = F.cross_entropy(logits, targets).item()
    p_clean = clean.softmax(-1)
    result["kl_div"] = (p_clean * (clean.log_softmax(-1) - runs["spliced"].log_softmax(-1))).sum(-1).mean().item()
    return result


# ---- known answers --------------------------------------------------------------------------------------------------


def test_an_exact_sae_has_fvu_0_loss_recovered_1_and_kl_0(tiny_llama, blocks):
    report = evaluate(tiny_llama, exact_sae(tiny_llama.hidden_size), blocks)
    assert report["fvu"] == 0 and report["mse"] == 0 and report["explained_variance"] == 1
    assert report["cosine_similarity"] == pytest.approx(1, abs=1e-12)
    assert report["norm_ratio"] == pytest.approx(1, abs=1e-12)
    assert report["ce_loss_spliced"] == report["ce_loss_clean"]
    assert report["loss_recovered"] == 1 and report["loss_recovered_mean_ablation"] == 1
    assert report["kl_div"] == 0
    assert report["l0"] == tiny_llama.hidden_size  # one of relu(x_i), relu(-x_i) fires for every coordinate
    assert report["dead_fraction"] == 0 and report["dense_fraction"] == 1
    assert report["eval_tokens"] == 12 * 19 - 2  # position 0 and the two EOS tokens are left out
    assert report["eval_predictions"] == report["eval_tokens"] - 12  # a block's last token predicts nothing
    assert report["firing_density_histogram"]["dead"] == 0
    assert sum(report["firing_density_histogram"]["counts"]) == 2 * tiny_llama.hidden_size


def test_blocks_of_two_tokens_give_reconstruction_metrics_and_no_lm_loss(tiny_llama, blocks):
    report = evaluate(tiny_llama, exact_sae(tiny_llama.hidden_size), blocks[:, :2])  # BOS and one token
    assert report["eval_tokens"] == 12 and report["fvu"] == 0  # each kept token is a block's last: nothing to predict
    assert "ce_loss_clean" not in report and "loss_recovered" not in report


def test_an_sae_that_outputs_zeros_recovers_nothing_against_zero_ablation(tiny_llama, blocks):
    d = tiny_llama.hidden_size
    sae = relu_sae(d, torch.randn(3 * d, d), torch.zeros(3 * d, d))
    report = evaluate(tiny_llama, sae, blocks)
    assert report["ce_loss_spliced"] == report["ce_loss_zero_ablated"]
    assert report["loss_recovered"] == 0
    assert report["cosine_similarity"] == 0 and report["norm_ratio"] == 0
    assert report["fvu"] > 1  # all of |x|^2, of which the variance about the mean is only a part


def test_a_reconstruction_equal_to_the_mean_has_fvu_1(tiny_llama, blocks):
    d = tiny_llama.hidden_size
    acts = {}
    logits_with(tiny_llama, blocks, lambda output: acts.setdefault("x", output))
    mean = acts["x"][kept_tokens(blocks, acts["x"])].double().mean(0).float()
    report = evaluate(tiny_llama, relu_sae(d, torch.randn(2 * d, d), torch.zeros(2 * d, d), b_dec=mean), blocks)
    assert report["fvu"] == pytest.approx(1, abs=1e-6)
    assert report["explained_variance"] == pytest.approx(0, abs=1e-6)
    assert report["loss_recovered_mean_ablation"] == pytest.approx(0, abs=1e-4)  # splicing the mean is mean ablation


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_every_metric_equals_a_direct_computation(tiny_llama, blocks, architecture):
    torch.manual_seed(3)
    k = 5 if architecture == "topk" else None
    sae = SaeModel(SaeConfig(d_in=tiny_llama.hidden_size, num_latents=96, architecture=architecture, k=k,
                             hookpoint=HOOKPOINT)).eval()  # fmt: skip
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    # One token made an outlier (1000 times the others' norm) in the residual stream feeding block 1.
    boost = tiny_llama.model.model.layers[0].register_forward_hook(
        lambda module, args, output: output * torch.where(torch.arange(20) == 9, 1000.0, 1.0)[None, :, None]
    )
    try:
        report = evaluate(tiny_llama, sae, blocks)
        expected = direct_metrics(tiny_llama, sae, blocks)
    finally:
        boost.remove()
    assert report["outlier_tokens"] == 12  # position 9 of every block
    assert report["eval_tokens"] == expected["eval_tokens"] == 12 * 18 - 2
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    ce = {run: report[f"ce_loss_{run}"] for run in ("clean", "spliced", "zero_ablated", "mean_ablated")}
    assert report["loss_recovered"] == (ce["zero_ablated"] - ce["spliced"]) / (ce["zero_ablated"] - ce["clean"])
    assert report["loss_recovered_mean_ablation"] == (
        (ce["mean_ablated"] - ce["spliced"]) / (ce["mean_ablated"] - ce["clean"]))  # fmt: skip


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_the_report_does_not_depend_on_the_batch_size(tiny_llama, blocks, dtype, tolerance):
    # In float64 only the summation order could differ; in float32 the LM's own kernels round a little differently
    # for different batch shapes (about 1e-9 here), which no accumulation can undo.
    sae = SaeModel(SaeConfig(d_in=tiny_llama.hidden_size, num_latents=96, architecture="topk", k=5,
                             hookpoint=HOOKPOINT)).eval().to(dtype)  # fmt: skip
    tiny_llama.model.to(dtype)
    reports = [evaluate(tiny_llama, sae, blocks, batch_size=size) for size in (1, 5, 12)]
    for other in reports[1:]:
        assert other.keys() == reports[0].keys()
        for key, value in reports[0].items():
            expected = pytest.approx(value, rel=tolerance, abs=1e-15) if isinstance(value, float) else value
            assert other[key] == expected, key
    budgeted = [evaluate(tiny_llama, sae, blocks, batch_size=size, max_tokens=100) for size in (2, 3)]
    assert budgeted[0]["eval_tokens"] == budgeted[1]["eval_tokens"] == 5 * 19 - 1  # 5 whole blocks, one EOS
    assert budgeted[0]["fvu"] == pytest.approx(budgeted[1]["fvu"], rel=tolerance)


def test_the_evaluate_metric_loads_offline_and_gives_the_same_numbers(monkeypatch):
    import evaluate

    def no_network(*args, **kwargs):
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(reconstruction_metric_path())
    x = torch.randn(40, 6, dtype=torch.float64) + 3.0
    x_hat = x + 0.3 * torch.randn(40, 6, dtype=torch.float64)
    expected = {
        "fvu": ((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item(),
        "mse": F.mse_loss(x_hat, x).item(),
        "cosine_similarity": F.cosine_similarity(x_hat, x, dim=-1).mean().item(),
        "norm_ratio": (x_hat.norm(dim=-1) / x.norm(dim=-1)).mean().item(),
    }
    whole = metric.compute(predictions=x_hat.numpy(), references=x.numpy())
    metric.add_batch(predictions=x_hat[:13].numpy(), references=x[:13].numpy())
    metric.add_batch(predictions=x_hat[13:].numpy(), references=x[13:].numpy())
    streamed = metric.compute()
    for result in (whole, streamed):
        assert result["num_tokens"] == 40
        assert result["explained_variance"] == pytest.approx(1 - expected["fvu"], rel=1e-12)
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, rel=1e-12), key
    # Sums in place of rows, as evaluate_saes passes them: the same numbers without storing any activation.
    from hf_sae.metrics.sae_reconstruction.sae_reconstruction import statistics_of

    from_sums = metric.compute(predictions=[], references=[], statistics=statistics_of(x.numpy(), x_hat.numpy()))
    assert from_sums == pytest.approx(whole, rel=1e-12)


# ---- the command line -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A saved tiny Llama with a word-level tokenizer, a jsonl corpus with a test split, and a training run's folder
    (one SAE subfolder, a checkpoint and a metrics file beside it)."""
    root = tmp_path_factory.mktemp("eval")
    save_tiny_llama_and_corpus(
        root,
        num_words=60,
        hidden_size=16,
        intermediate_size=24,
        num_layers=2,
        heads=2,
        kv_heads=1,
        documents={"train": 5, "test": 30},
        words_per_document=(20, 60),
    )
    sae = SaeModel(SaeConfig(d_in=16, num_latents=64, architecture="topk", k=4, hookpoint=HOOKPOINT,
                             base_model_name_or_path=str(root / "lm")))  # fmt: skip
    sae.save_pretrained(root / "run" / HOOKPOINT)
    (root / "run" / "checkpoint-5").mkdir()
    (root / "run" / "checkpoint-5" / "model.safetensors").write_bytes(b"not an SAE")
    (root / "run" / "metrics.json").write_text(json.dumps({HOOKPOINT: {"train_tokens": 1000}}))
    return root


def test_hf_sae_eval_writes_the_report_plots_and_metrics_beside_the_sae(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--sae", str(tiny_run / "run"), "--dataset_name", str(tiny_run / "text"), "--context_size",
            "32", "--output_dir", str(out), "--eval_tokens", "640", "--lm_dtype", "float32",
            "--save_beside_saes"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert HOOKPOINT in printed and "loss_recovered" in printed and "fvu" in printed
    report = json.loads((out / "eval_results.json").read_text())
    metrics = report[HOOKPOINT]
    for key in ("fvu", "mse", "l0", "explained_variance", "cosine_similarity", "norm_ratio", "dead_fraction",
                "dense_fraction", *LM_KEYS, "loss_recovered", "loss_recovered_mean_ablation",
                "eval_tokens"):  # fmt: skip
        assert key in metrics, key
    assert metrics["l0"] == pytest.approx(4.0)
    assert metrics["eval_tokens"] <= 640 - 20  # 20 blocks of 32, less position 0 and EOS
    assert (out / f"firing_density_{HOOKPOINT}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "eval_args.json").read_text())["dataset_split"] == "test"
    beside = json.loads((tiny_run / "run" / HOOKPOINT / "metrics.json").read_text())
    assert beside["fvu"] == metrics["fvu"] and "firing_density_histogram" not in beside
    assert not list(out.glob(".*.tmp*"))  # written under temporary names, then renamed

    results = report_to_eval_results(report, dataset="text", split="test")
    by_type = {r.metric_type: r for r in results}
    assert by_type["loss_recovered"].metric_value == metrics["loss_recovered"]
    assert by_type["fvu"].dataset_config == HOOKPOINT and "eval_tokens" not in by_type


def test_save_beside_saes_refuses_a_hub_repo_before_any_work(monkeypatch):
    monkeypatch.setenv("HF_SAE_DEBUG", "1")  # the error itself, not its one-line print
    with pytest.raises(HfSaeError, match="not one"):
        main(["eval", "--sae", "someone/saes", "--output_dir", "unused", "--save_beside_saes"])


def test_histogram_counts_every_latent_that_fired():
    from hf_sae.evaluation import firing_density_histogram

    frequency = torch.tensor([0.0, 1.0, 0.5, 1e-3, 1e-3, 0.0], dtype=torch.float64)
    histogram = firing_density_histogram(frequency, num_tokens=1000)
    assert histogram["dead"] == 2 and sum(histogram["counts"]) == 4
    edges = np.array(histogram["log10_frequency_bin_edges"])
    assert edges[0] == -3 and edges[-1] == 0 and histogram["counts"][-1] == 1  # frequency 1 is in the last bin


def test_per_source_numbers_equal_evaluating_each_source_alone(tiny_llama, blocks):
    torch.manual_seed(3)
    sae = SaeModel(SaeConfig(d_in=tiny_llama.hidden_size, num_latents=40, architecture="topk", k=3,
                             hookpoint=HOOKPOINT)).eval()  # fmt: skip
    sources = ["b", "a", "a", "b", "c", "a", "b", "a", "c", "a", "b", "a"]
    report = evaluate(tiny_llama, sae, blocks, sources=sources)
    assert sorted(report["per_source"]) == ["a", "b", "c"]
    pooled = evaluate(tiny_llama, sae, blocks)  # the pooled numbers do not change
    for key in ("fvu", "l0", "loss_recovered", "kl_div", "ce_loss_mean_ablated", "eval_tokens"):
        assert report[key] == pytest.approx(pooled[key], rel=1e-9), key
    for source, numbers in report["per_source"].items():
        alone = evaluate(tiny_llama, sae, blocks[[s == source for s in sources]])
        for key in ("fvu", "explained_variance", "l0", "loss_recovered", "kl_div", "ce_loss_spliced", "eval_tokens"):
            assert numbers[key] == pytest.approx(alone[key], rel=1e-9), (source, key)
    tokens = [report["per_source"][s]["eval_tokens"] for s in "abc"]
    assert sum(tokens) == report["eval_tokens"] and len(set(tokens)) == 3  # a real split, not copies
    assert len({report["per_source"][s]["fvu"] for s in "abc"}) == 3


def test_the_default_run_reports_per_source_and_the_card_names_the_sources(tmp_path, monkeypatch):
    """Two sources stored one after the other, a budget smaller than the first: the run harvests both."""
    from hf_sae import runners
    from hf_sae.arguments import TRAIN_GROUPS, group_arguments

    save_tiny_llama_and_corpus(tmp_path, num_words=60, hidden_size=16, intermediate_size=24, num_layers=2, heads=2,
                               kv_heads=1, documents={}, words_per_document=(20, 60))  # fmt: skip
    rng = np.random.default_rng(0)
    for split, count in {"train": 150, "test": 20}.items():
        rows = [{"text": " ".join(f"w{i}" for i in rng.integers(lo, lo + 30, 40)), "source": source}
                for source, lo in (("first", 0), ("second", 30)) for _ in range(count)]  # fmt: skip
        (tmp_path / "text").mkdir(exist_ok=True)
        (tmp_path / "text" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    harvested: list[str] = []
    real_iter_blocks = runners.iter_blocks

    def recording(blocks):  # the blocks the run reads, with their source
        for row, block in zip(blocks, real_iter_blocks(blocks)):
            harvested.append(row["source"])
            yield block

    monkeypatch.setattr(runners, "iter_blocks", recording)
    out = tmp_path / "run"
    flat = dict(model_name_or_path=str(tmp_path / "lm"), hookpoints=[HOOKPOINT], k=4, expansion_factor=4,
                dataset_name=str(tmp_path / "text"), context_size=32, train_tokens=2048, batch_size=256,
                shuffle_buffer_tokens=512, output_dir=str(out), report_to="none", eval_tokens=1000, save_steps=0,
                lm_dtype="float32")  # fmt: skip
    # 2,048 tokens are under 20% of the first source's ~6,000: in stored order the run reads it alone.
    runners.train_saes(*group_arguments(TRAIN_GROUPS, **flat | {"shuffle_seed": None, "output_dir": str(out) + "0"}))
    assert set(harvested) == {"first"}
    harvested.clear()
    report = runners.train_saes(*group_arguments(TRAIN_GROUPS, **flat))
    assert harvested.count("first") >= 10 and harvested.count("second") >= 10, harvested
    metrics = report[HOOKPOINT]
    assert sorted(metrics["per_source"]) == ["first", "second"] and metrics["datasets"] == [str(tmp_path / "text")]
    assert sum(m["eval_tokens"] for m in metrics["per_source"].values()) == metrics["eval_tokens"]
    saved = json.loads((out / HOOKPOINT / "metrics.json").read_text())
    assert saved["per_source"] == metrics["per_source"]  # JSON keeps float64 exactly
    card = (out / "README.md").read_text()
    assert "2 sources: first, second" in card and f"Trained on `{tmp_path / 'text'}`" in card
    assert json.loads((out / "training_args.json").read_text())["shuffle_seed"] == 0  # the recorded seed
