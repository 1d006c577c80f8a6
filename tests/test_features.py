"""Feature metadata on a tiny LM and SAE, checked against direct computations over every token."""

import json
import math

import pandas as pd
import pytest
import torch
from conftest import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, make_tiny_lm
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_sae import SaeConfig, SaeModel
from hf_sae.cli import format_explanation, main
from hf_sae.errors import HfSaeError
from hf_sae.feature_directions import decoder_neighbours, logit_effects
from hf_sae.feature_store import load_features
from hf_sae.features import FeatureCollector, auto_label, collect_feature_metadata, explain

TOP_N, BEFORE, AFTER = 6, 3, 2


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: token i is the word `w{i}`, with the special ids of the tiny LMs."""
    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, **{f"w{i}": i for i in range(3, VOCAB_SIZE)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_sae(d_in: int, architecture: str = "topk", hookpoint: str = "model.layers.1", **config) -> SaeModel:
    torch.manual_seed(0)
    k = 4 if architecture == "topk" else None
    sae = SaeModel(SaeConfig(d_in=d_in, num_latents=48, architecture=architecture, k=k, hookpoint=hookpoint, **config))
    if architecture == "relu":
        with torch.no_grad():
            sae.W_enc.mul_(10)
            sae.b_enc.fill_(-0.02)  # sparse enough that the top contexts mean something
    return sae.eval()


def token_blocks(num_blocks: int = 12, seq: int = 16, seed: int = 1) -> torch.Tensor:
    """(num_blocks, seq) ids: BOS first, a distinct first word per block (so that no two tokens share their whole
    prefix and tie), a few EOS separators inside."""
    ids = torch.randint(3, VOCAB_SIZE, (num_blocks, seq), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, 1] = BOS_ID, torch.arange(3, 3 + num_blocks)
    ids[::3, 9] = EOS_ID
    return ids


def counted_by_hand(ids: torch.Tensor) -> torch.Tensor:
    """(blocks, seq) True on the tokens feature statistics count: not position 0, not a special token, not the token
    right after a special one."""
    previous = torch.cat([torch.full_like(ids[:, :1], BOS_ID), ids[:, :-1]], 1)
    return (ids > EOS_ID) & (previous > EOS_ID) & (torch.arange(ids.shape[1]) > 0)


def brute_force(model, sae, hookpoint, ids, batch_size=4):
    """Latents of every token (num_blocks, seq, num_latents), zero where not counted, from a plain forward hook."""
    seen, chunks = [], []
    handle = model.get_submodule(hookpoint).register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                model(ids[start : start + batch_size])
                z = sae.encode(seen.pop())  # (batch, seq, num_latents)
                counted = counted_by_hand(ids[start : start + batch_size])
                chunks.append(z * counted[..., None])
    finally:
        handle.remove()
    return torch.cat(chunks)


@pytest.fixture
def setup():
    lm = make_tiny_lm("llama")
    return lm.model, tiny_tokenizer(), lm.blocks[1]


def collect(model, tokenizer, sae, ids, **kwargs):
    batches = [ids[i : i + 4] for i in range(0, len(ids), 4)]
    kwargs = {"top_n": TOP_N, "before": BEFORE, "after": AFTER, "outlier_factor": None, **kwargs}
    return collect_feature_metadata(model, tokenizer, sae, batches, **kwargs)


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_statistics_equal_a_direct_computation_over_all_tokens(setup, architecture):
    model, tokenizer, hookpoint = setup
    sae, ids = tiny_sae(24, architecture), token_blocks()
    features = collect(model, tokenizer, sae, ids)
    z = brute_force(model, sae, hookpoint, ids)  # (blocks, seq, num_latents)
    flat = z.reshape(-1, z.shape[-1])
    stats = features.stats
    num_tokens = int(counted_by_hand(ids).sum())
    assert features.metadata["tokens"] == num_tokens
    counts = (flat > 0).sum(0)
    assert counts.sum() > 0 and stats["count"].tolist() == counts.tolist()
    torch.testing.assert_close(torch.tensor(stats["frequency"].values), counts.double() / num_tokens)
    fired = counts > 0
    mean = flat.sum(0) / counts
    torch.testing.assert_close(torch.tensor(stats["mean_activation"].values)[fired], mean[fired])
    assert torch.equal(torch.tensor(stats["max_activation"].values)[fired], flat.max(0).values[fired])
    assert stats["mean_activation"][~fired.numpy()].isna().all()
    assert (stats["auto_label"][~fired.numpy()] == "").all() and (stats["auto_label"][fired.numpy()] != "").all()

    ratio = math.log(features.metadata["histogram_edges"][1] / features.metadata["histogram_edges"][0])
    for i in torch.nonzero(fired).flatten().tolist():
        values = flat[:, i][flat[:, i] > 0].sort().values
        for q in (0.5, 0.9, 0.99):
            exact = values[math.ceil(q * len(values)) - 1]
            assert abs(math.log(stats[f"p{100 * q:g}"][i] / exact)) <= ratio + 1e-6

        order = flat[:, i].argsort(descending=True)[:TOP_N]
        order = order[flat[order, i] > 0]
        examples = features[i].examples
        assert [e["activation"] for e in examples] == flat[order, i].tolist()
        for example, token in zip(examples, order.tolist()):
            block, position = divmod(token, ids.shape[1])
            lo, hi = max(position - BEFORE, 0), min(position + AFTER + 1, ids.shape[1])
            assert (example["block"], example["position"]) == (block, position)
            assert example["token_ids"] == ids[block, lo:hi].tolist()
            assert example["tokens"] == [tokenizer.decode([t]) for t in ids[block, lo:hi].tolist()]
            assert example["activations"] == z[block, lo:hi, i].tolist()
            assert example["token_ids"][example["peak"]] == ids[block, position]


def test_max_tokens_counts_exactly_the_first_tokens(setup):
    model, tokenizer, hookpoint = setup
    sae, ids = tiny_sae(24), token_blocks()
    features = collect(model, tokenizer, sae, ids, max_tokens=50)
    z = brute_force(model, sae, hookpoint, ids)
    counted = counted_by_hand(ids).flatten()
    first = counted & (counted.cumsum(0) <= 50)
    assert features.metadata["tokens"] == 50
    assert features.stats["count"].tolist() == (z.reshape(-1, 48)[first] > 0).sum(0).tolist()


def test_auto_label_names_recurring_peak_tokens_else_promoted_tokens():
    assert auto_label([" Paris", " Paris", " London", "\n", "\n", " Rome"], [" France"]) == "Paris / ⏎"
    assert auto_label([" Paris", " London"], [" France", " Italy", "  ", " Spain"]) == "→ France / Italy / ␣"


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # RMSNorm and LayerNorm (centring, bias)
def test_logit_effects_equal_direction_through_final_norm_and_unembedding(family):
    lm = make_tiny_lm(family)
    with torch.no_grad():
        norm = lm.model.model.norm if family == "llama" else lm.model.transformer.ln_f
        norm.weight.uniform_(0.5, 1.5)  # a gain that is not all ones, so that leaving it out would show
        if family == "gpt2":
            norm.bias.normal_()
    sae = tiny_sae(lm.hidden_size, hookpoint=lm.blocks[1])
    d = sae.W_dec.detach()
    d = d - d.mean(-1, keepdim=True) if family == "gpt2" else d
    direct = (d * norm.weight) @ lm.model.lm_head.weight.T  # (num_latents, vocab)
    effects = logit_effects(lm.model, sae, top=7)
    values, ids = direct.topk(7, dim=1)
    assert torch.equal(effects["promoted_ids"].long(), ids)
    torch.testing.assert_close(effects["promoted_logits"], values, rtol=1e-4, atol=1e-5)
    values, ids = direct.topk(7, dim=1, largest=False)
    assert torch.equal(effects["suppressed_ids"].long(), ids)
    torch.testing.assert_close(effects["suppressed_logits"], values, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_with_pandas_datasets_and_from_pretrained(setup, tmp_path):
    from datasets import load_dataset

    model, tokenizer, _ = setup
    sae = tiny_sae(24)
    features = collect(model, tokenizer, sae, token_blocks())
    sae.save_pretrained(tmp_path / "sae")
    features.save_pretrained(tmp_path / "sae" / "features")
    folder = tmp_path / "sae" / "features"
    assert sorted(p.name for p in folder.iterdir()) == [
        "examples.parquet", "labels.json", "metadata.json", "quantile_examples.parquet", "random_contexts.parquet",
        "stats.parquet",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "stats.parquet"), features.stats)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "examples.parquet"), features.examples())
    sampled = pd.read_parquet(folder / "quantile_examples.parquet")
    pd.testing.assert_frame_equal(sampled, features.quantile_examples_table().to_pandas())
    stats = load_dataset("parquet", data_files=str(folder / "stats.parquet"), split="train")
    examples = load_dataset("parquet", data_files=str(folder / "examples.parquet"), split="train")
    assert stats.num_rows == 48 and stats[5]["count"] == features[5]["count"]
    assert examples.num_rows == len(features.examples())
    assert examples[0]["tokens"] == features.examples()["tokens"][0].tolist()
    assert json.loads((folder / "metadata.json").read_text())["num_latents"] == 48

    loaded = SaeModel.from_pretrained(tmp_path / "sae")
    assert loaded.features[5].stats == features[5].stats
    assert loaded.features[5].examples == features[5].examples
    assert loaded.features[5].quantile_examples == features[5].quantile_examples != []
    assert len(loaded.features) == 48 and loaded.features.label(5) == features[5].auto_label

    loaded.features.set_label(5, "five")
    assert SaeModel.from_pretrained(tmp_path / "sae").features[5].label == "five"
    assert load_features(tmp_path / "sae").labels == {5: "five"}
    loaded.features.set_label(5, None)
    assert load_features(tmp_path / "sae").label(5) == features[5].auto_label
    with pytest.raises(IndexError, match=r"\[0, 48\)"):
        loaded.features.set_label(48, "out of range")
    with pytest.raises(HfSaeError, match="hf-sae features"):
        load_features(tmp_path)


def test_a_failed_save_keeps_the_existing_folder(setup, tmp_path, monkeypatch):
    import hf_sae.feature_store as module

    model, tokenizer, _ = setup
    features = collect(model, tokenizer, tiny_sae(24), token_blocks())
    features.save_pretrained(tmp_path / "features")
    features.set_label(1, "kept")
    before = {p.name: p.read_bytes() for p in (tmp_path / "features").iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        features.save_pretrained(tmp_path / "features")
    assert {p.name: p.read_bytes() for p in (tmp_path / "features").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["features"]  # no temporary folder left behind


def test_explain_matches_encode_on_the_same_tokens(setup):
    model, tokenizer, hookpoint = setup
    sae = tiny_sae(24)
    features = collect(model, tokenizer, sae, token_blocks())
    features.set_label(7, "seven")
    rows = explain(model, tokenizer, sae, "w5 w7 w9 w11 w40", top=3, features=features)
    ids = torch.tensor([[BOS_ID, 5, 7, 9, 11, 40]])
    with torch.no_grad():  # hidden_states[2] is block 1's output
        z = sae.encode(model(ids, output_hidden_states=True).hidden_states[2])[0, 1:]  # (5, num_latents)
    assert [row["token"] for row in rows] == ["w5", "w7", "w9", "w11", "w40"]
    for row, latents in zip(rows, z):
        values, top = latents.topk(3)
        assert [f["feature"] for f in row["features"]] == top[values > 0].tolist()
        torch.testing.assert_close(torch.tensor([f["activation"] for f in row["features"]]), values[values > 0])
        assert [f["label"] for f in row["features"]] == [features.label(i) for i in top[values > 0].tolist()]
    table = format_explanation(rows)
    assert "'w40'" in table and len(table.splitlines()) == 1 + sum(len(r["features"]) for r in rows)


def test_collector_memory_does_not_grow_with_tokens():
    collector = FeatureCollector(300, top_n=5, before=2, after=2, vocab_size=99)

    def held() -> int:
        return sum(v.numel() * v.element_size() for v in vars(collector).values() if isinstance(v, torch.Tensor))

    def feed(batches: int) -> None:
        for _ in range(batches):
            z = torch.randn(4, 32, 300).relu()
            collector.update(z, torch.randint(3, 99, (4, 32)), torch.ones(4, 32, dtype=torch.bool))

    feed(1)
    first, nbytes = held(), collector.state_nbytes()
    feed(30)
    assert held() == first and collector.state_nbytes() == nbytes and collector.tokens == 31 * 128
    assert not [k for k, v in vars(collector).items() if isinstance(v, list | dict | set)]


def test_cli_collects_and_explains(setup, tmp_path, capsys):
    model, tokenizer, hookpoint = setup
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    sae = tiny_sae(24, base_model_name_or_path=str(tmp_path / "lm"))  # where the CLI finds the LM
    sae.save_pretrained(tmp_path / "sae")
    words = torch.randint(3, VOCAB_SIZE, (40, 30), generator=torch.Generator().manual_seed(2)).tolist()
    (tmp_path / "text.txt").write_text("\n".join(" ".join(f"w{i}" for i in line) for line in words))
    args = ["--sae", str(tmp_path / "sae"), "--dataset_name", str(tmp_path / "text.txt"), "--context_size", "16"]
    args += ["--held_out", "false"]  # the training text: 40 documents hold no held-out one
    assert main(["features", *args, "--max_tokens", "300", "--top_n", "4", "--lm_dtype", "float32"]) == 0
    features = load_features(tmp_path / "sae")
    assert features.metadata["tokens"] == 300 and features.stats["count"].sum() == 300 * 4
    assert features.metadata["text"] == {"split": "train[other documents]", "held_out": False,
                                         "training_eval_split": None}  # fmt: skip
    from hf_sae.interpretability import CLEAR_PATTERN

    # The share of features with a clear pattern goes to metrics.json, where the card and the Hub read metrics.
    scores = features.stats["interpretability"].dropna()
    share = json.loads((tmp_path / "sae" / "metrics.json").read_text())["clear_pattern_share"]
    assert len(scores) > 0 and share == pytest.approx(float((scores >= CLEAR_PATTERN).mean()))
    features.set_label(int(features.stats["count"].idxmax()), "busiest")
    assert main(["features", *args, "--max_tokens", "200"]) == 1  # earlier statistics are not replaced unasked
    assert load_features(tmp_path / "sae").metadata["tokens"] == 300
    assert main(["features", *args, "--max_tokens", "200", "--overwrite"]) == 0  # labels people set are kept
    assert load_features(tmp_path / "sae").labels == features.labels
    capsys.readouterr()
    assert main(["features", "--sae", str(tmp_path / "sae"), "--explain", "w5 w6 w7", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "'w7'" in out and "feature" in out


def test_feature_statistics_read_as_attributes(tmp_path):
    from hf_sae.feature_store import Feature

    feature = Feature(index=3, label="x", auto_label="x", stats={"max_activation": 2.5, "frequency": 0.01})
    assert (feature.max_activation, feature["frequency"]) == (2.5, 0.01)
    with pytest.raises(AttributeError, match=r"no attribute or statistic 'nope'"):
        feature.nope


def test_quantile_examples_are_a_uniform_sample_split_into_equal_count_bins(setup):
    """Every sampled context is a real firing with its real window; a feature's sample holds min(count, size)
    distinct firings, split by activation into 10 bins of equal count, bin 0 the weakest; and over many seeds each
    firing is drawn about equally often."""
    model, tokenizer, hookpoint = setup
    sae, ids = tiny_sae(24, "relu"), token_blocks()
    features = collect(model, tokenizer, sae, ids, sample_size=20)
    z = brute_force(model, sae, hookpoint, ids)
    counts = features.stats["count"]
    many = int(counts.idxmax())
    assert counts[many] > 20 and features.metadata["quantile_bins"] == 10
    for i in (many, *counts.index[(counts > 0) & (counts < 20)][:3]):
        sampled = features[i].quantile_examples
        assert len(sampled) == min(counts[i], 20)
        assert len({(e["block"], e["position"]) for e in sampled}) == len(sampled)
        for e in sampled:
            assert e["activation"] == z[e["block"], e["position"], i] > 0
            lo = max(e["position"] - BEFORE, 0)
            assert e["token_ids"] == ids[e["block"], lo : e["position"] + AFTER + 1].tolist()
            assert e["activations"] == z[e["block"], lo : e["position"] + AFTER + 1, i].tolist()
        by_bin = sorted(sampled, key=lambda e: (e["bin"], e["activation"]))
        assert [e["activation"] for e in by_bin] == sorted(e["activation"] for e in sampled)
        sizes = pd.Series([e["bin"] for e in sampled]).value_counts()
        assert sizes.max() - sizes.min() <= 1 and sizes.index.max() == min(10, len(sampled)) - 1

    column = z[..., many : many + 1]  # (blocks, seq, 1) that feature alone
    firings = int((column > 0).sum())
    rank = (column.flatten() > 0).cumsum(0) - 1  # each firing's index in reading order
    drawn = torch.zeros(firings)
    for seed in range(200):
        collector = FeatureCollector(1, top_n=1, sample_size=6, before=0, after=0, seed=seed)
        for start in range(0, len(z), 4):
            collector.update(
                column[start : start + 4], ids[start : start + 4], counted_by_hand(ids[start : start + 4])
            )
        where = collector.sample.where[0]  # (6, 2) block, position
        drawn[rank[where[:, 0] * ids.shape[1] + where[:, 1]]] += 1
    expected = 200 * 6 / firings
    assert drawn.sum() == 1200 and (drawn - expected).abs().max() < 5 * expected**0.5  # binomial spread


def test_tokens_after_special_ones_are_left_out_and_robust_peak_ignores_one_outlier(setup):
    """A feature that fires hugely once, right after BOS: by default that token is not counted at all; without the
    rule, max_activation is set by that one context while robust_peak (the top-N median) stays with the rest."""
    model, tokenizer, hookpoint = setup
    sae, ids = tiny_sae(24, "relu"), token_blocks()
    z = brute_force(model, sae, hookpoint, ids)
    counts = (z.reshape(-1, 48) > 0).sum(0)
    feature = int(counts.argmax())
    assert counts[feature] > TOP_N
    plain, calls = sae.encode, []

    def spiked(x):  # the first block's token after BOS fires `feature` at 100 more
        out = plain(x)
        if out.dim() == 3 and not calls:
            out = out.clone()
            out[0, 1, feature] += 100.0
        calls.append(1)
        return out

    sae.encode = spiked
    every = collect(model, tokenizer, sae, ids, skip_after_special=False)
    calls.clear()
    skipped = collect(model, tokenizer, sae, ids)
    after = int(((ids > EOS_ID) & ~counted_by_hand(ids))[:, 1:].sum())  # after BOS or EOS, not special itself
    assert skipped.metadata["after_special_tokens"] == after > 0 and every.metadata["after_special_tokens"] == 0
    assert every.metadata["tokens"] == skipped.metadata["tokens"] + after
    top = sorted(e["activation"] for e in every[feature].examples)
    assert every[feature].max_activation == top[-1] > 100
    assert every[feature].robust_peak == top[(len(top) - 1) // 2] < 10
    assert skipped[feature].max_activation == float(z[..., feature].max()) < 100
    assert all(e["position"] != 1 for e in skipped[feature].examples)


def test_blocked_decoder_neighbours_equal_the_dense_computation():
    torch.manual_seed(0)
    W_dec = torch.randn(300, 24)
    directions = torch.nn.functional.normalize(W_dec, dim=1)
    dense = directions @ directions.T
    dense.fill_diagonal_(-torch.inf)
    values, ids = dense.topk(10, dim=1)
    for block_bytes in (4 * 300 * 7, 4 * 300, 1, 2**30):  # 7 rows, 1 row, 1 row, all rows at once
        got_ids, got = decoder_neighbours(W_dec, top=10, block_bytes=block_bytes)
        assert torch.equal(got_ids, ids.int())
        torch.testing.assert_close(got, values)
    assert not (got_ids == torch.arange(300)[:, None]).any()  # never itself


def test_logit_histogram_counts_every_vocabulary_entry():
    lm = make_tiny_lm("llama")
    sae = tiny_sae(lm.hidden_size, hookpoint=lm.blocks[1])
    direct = (sae.W_dec.detach() * lm.model.model.norm.weight) @ lm.model.lm_head.weight.T  # (num_latents, vocab)
    effects = logit_effects(lm.model, sae, top=7, bins=16)
    histogram, ranges = effects["logit_histogram"], effects["logit_range"]
    assert histogram.shape == (48, 16) and torch.equal(histogram.sum(1), torch.full((48,), direct.shape[1]))
    torch.testing.assert_close(ranges, torch.stack([direct.min(1).values, direct.max(1).values], 1))
    for i in range(48):
        by_hand = torch.histc(direct[i], bins=16, min=float(ranges[i, 0]), max=float(ranges[i, 1]))
        assert (by_hand.long() - histogram[i]).abs().sum() <= 2  # a value on a bin edge may round either way


def test_features_read_the_held_out_text_by_default_and_say_so(setup, tmp_path, caplog):
    """Without --dataset_split, `hf-sae features` reads the documents training left out (every 50th of a single
    file, by the rule of training's held-out report), records that split beside the training run's, and logs it."""
    model, tokenizer, hookpoint = setup
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    sae = tiny_sae(24, base_model_name_or_path=str(tmp_path / "lm"))
    sae.save_pretrained(tmp_path / "sae")
    (tmp_path / "sae" / "metrics.json").write_text(json.dumps({"eval_split": "train[every 50th document]"}))
    held_out = {49, 99, 149, 199}  # documents 50, 100, ...: their words are w3 to w9, the others' w10 and up
    lines = [" ".join(f"w{3 + (i + j) % 7 if i in held_out else 10 + (i + j) % 30}" for j in range(30))
             for i in range(200)]  # fmt: skip
    (tmp_path / "text.txt").write_text("\n".join(lines))
    args = ["--sae", str(tmp_path / "sae"), "--dataset_name", str(tmp_path / "text.txt"), "--context_size", "16"]
    with caplog.at_level("INFO", logger="hf_sae"):
        assert main(["features", *args, "--max_tokens", "5000", "--lm_dtype", "float32"]) == 0
    features = load_features(tmp_path / "sae")
    split = "train[every 50th document]"
    assert features.metadata["text"] == {"split": split, "held_out": True, "training_eval_split": split}
    assert features.metadata["data"]["dataset_split"] == "test"
    words = {int(t) for t in features.examples_table().column("token_ids").combine_chunks().flatten().to_pylist()}
    assert words and words <= set(range(3, 10)) | {BOS_ID, EOS_ID}
    assert 0 < features.metadata["tokens"] < 4 * 31  # four documents of 30 words and EOS, less what is not counted
    assert f"{split} (held-out text, which training did not read)" in caplog.text
    assert features.text_note == f"held-out text ({split})"


def test_interpretability_score_equals_a_hand_computation_and_gates_the_label():
    """Feature 0 fires exactly on the token w5: its top contexts, its firings and the token agree, score 1, and its
    label shows. Feature 1 fires on 30% of the tokens at random: its score is the harmonic mean of the three shares
    computed here directly, low, and its label reads "no clear pattern"; it is dense, feature 0 is not."""
    from collections import Counter

    from hf_sae.feature_store import FeatureMetadata
    from hf_sae.features import build_tables, score_columns
    from hf_sae.interpretability import CLEAR_PATTERN, DENSE_FREQUENCY, interpretability_summary

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 203, (64, 16), generator=generator)
    z = torch.zeros(64, 16, 2)
    z[..., 0] = (ids == 5) * (1 + torch.rand(64, 16, generator=generator))
    z[..., 1] = (torch.rand(64, 16, generator=generator) < 0.3) * torch.rand(64, 16, generator=generator)
    mask = torch.ones(64, 16, dtype=torch.bool)
    mask[:, 0] = False
    collector = FeatureCollector(2, top_n=6, sample_size=2000, before=1, after=1, vocab_size=203)  # samples all
    collector.update(z, ids, mask)
    strings = {i: f" w{i}" for i in range(203)}
    _, scores = score_columns(collector, strings)
    tokens, acts = ids[mask], z[mask]  # (N,), (N, 2)
    for feature in (0, 1):
        fired = acts[:, feature] > 0
        top = tokens[acts[:, feature].argsort(descending=True)[: min(6, int(fired.sum()))]].tolist()
        label = {t for t, n in Counter(top).items() if n >= 2}  # at most 3 recur among 6
        on_label = torch.isin(tokens, torch.tensor(sorted(label) or [-1]))
        c = sum(t in label for t in top) / len(top)
        r = float((on_label & fired).sum() / fired.sum())
        p = float((on_label & fired).sum() / on_label.sum()) if label else 0.0
        expected = 3 / (1 / c + 1 / r + 1 / p) if min(c, r, p) > 0 else 0.0
        got = {k: float(v[feature]) for k, v in scores.items()}
        assert got == pytest.approx({"consistency": c, "label_recall": r, "label_precision": p,
                                     "interpretability": expected}, abs=1e-6)  # fmt: skip
    assert scores["interpretability"][0] == 1.0 and scores["interpretability"][1] < 0.2
    stats, examples, _ = build_tables(collector, None, strings)
    frequency = stats.column("frequency").to_pylist()
    assert frequency[0] < DENSE_FREQUENCY < frequency[1] and stats.column("dense").to_pylist() == [False, True]
    summary = interpretability_summary(stats.column("interpretability").to_pylist(), frequency)
    assert summary["clear_pattern_share"] == 0.5 and summary["threshold"] == CLEAR_PATTERN
    assert summary["dense_latents"] == 1
    features = FeatureMetadata(stats, examples, {"num_latents": 2, "interpretability": summary})
    assert [features.label(0), features.label(1)] == ["w5", "no clear pattern"]


def test_every_phase_after_the_text_shows_progress(setup, capsys, caplog):
    """The statistics, the logit effects (a bar over the features) and the last phase (a status line) each say so."""
    model, tokenizer, hookpoint = setup
    with caplog.at_level("INFO", logger="hf_sae"):
        collect(model, tokenizer, tiny_sae(24), token_blocks())
    err = capsys.readouterr().err
    assert "Feature statistics" in err and "Logit effects: 100%" in err and "48/48" in err
    assert "Nearest features by decoder cosine, labels and interpretability scores of 48 features" in caplog.text
