"""Neuronpedia's upload format from a tiny SAE's feature metadata.

The fixture in fixtures/neuronpedia/ was written by `write_fixture` (run this file as a script to write it again) and
read back by SAEDashboard 0.8.0's own classes (`NeuronpediaDashboardBatch(**batch)`, whose constructors take exactly
the fields below and refuse any other) and the `neuronpedia` 1.2.1 client's `Explanation.from_np_db_json`, in a
separate environment; these tests check the same structure without those packages.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB_SIZE
from test_features import collect, tiny_sae, tiny_tokenizer, token_blocks

from hf_sae import SaeModel
from hf_sae.convert import export_sae
from hf_sae.convert.neuronpedia import neuronpedia_layer
from hf_sae.errors import FeatureMetadataError

DEAD = 7
FIXTURE = Path(__file__).parent / "fixtures" / "neuronpedia"
# The keyword arguments of SAEDashboard's NeuronpediaDashboardBatch / Feature / Activation (sae_dashboard 0.8.0)
BATCH_FIELDS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
FEATURE_FIELDS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices",
    "correlated_features_l1", "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
    "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset", "activations",
    "decoder_weights_dist", "vector",
}  # fmt: skip
ACTIVATION_FIELDS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}
SKIPPED_FIELDS = {"model_id", "layer", "sae_set", "log_sparsity", "skipped_indexes"}
EXPLANATION_FIELDS = {"modelId", "source", "index", "description"}  # what Explanation.from_np_db_json requires


def saved_sae(folder: Path) -> SaeModel:
    """A tiny SAE with its features, one LLM explanation and one label set by hand, saved to `folder`."""
    from conftest import make_tiny_lm

    lm = make_tiny_lm("llama")
    sae = tiny_sae(24, "relu", base_model_name_or_path="tiny/Tiny-LM")
    with torch.no_grad():
        sae.b_enc[DEAD] = -1e4  # a feature that never fires
    blocks = token_blocks(num_blocks=6)
    features = collect(lm.model, tiny_tokenizer(), sae, blocks, top_n=3, num_logits=4, num_neighbours=3, sample_size=5)
    sae.save_pretrained(folder)
    features.save_pretrained(folder / "features")
    features.save_explanations({"explainer": "tiny-explainer", "features": {"3": {"explanation": "w7 words"}}})
    features.set_label(5, "five")
    return SaeModel.from_pretrained(folder)


def write_fixture(folder: Path = FIXTURE) -> Path:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return export_sae(saved_sae(Path(tmp) / "sae"), folder, "neuronpedia")


def check_structure(folder: Path) -> list[dict]:
    """Every file has the fields the real readers take, of the right types; returns the features."""
    batches = sorted(folder.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    assert batches, f"no batch files in {folder}"
    features = []
    for path in batches:
        batch = json.loads(path.read_text())
        assert set(batch) == BATCH_FIELDS and isinstance(batch["layer"], int)
        for feature in batch["features"]:
            assert set(feature) == FEATURE_FIELDS, set(feature) ^ FEATURE_FIELDS
            assert len(feature["pos_str"]) == len(feature["pos_values"]) and len(feature["neg_str"]) == len(
                feature["neg_values"]
            )
            for activation in feature["activations"]:
                assert set(activation) == ACTIVATION_FIELDS
                assert len(activation["tokens"]) == len(activation["values"])
                assert 0 <= activation["qualifying_token_index"] < len(activation["tokens"])
            features.append(feature)
    skipped = json.loads((folder / "skipped_indexes.json").read_text())
    assert set(skipped) == SKIPPED_FIELDS
    for row in json.loads((folder / "explanations.json").read_text()):
        assert EXPLANATION_FIELDS <= set(row) and int(row["index"]) >= 0
    return features


def test_committed_fixture_has_the_fields_neuronpedia_reads():
    features = check_structure(FIXTURE)
    skipped = json.loads((FIXTURE / "skipped_indexes.json").read_text())["skipped_indexes"]
    assert DEAD in skipped and sorted([f["feature_index"] for f in features] + skipped) == list(range(48))


def test_export_of_the_tiny_sae_is_the_fixture_the_real_readers_accepted(tmp_path):
    written = write_fixture(tmp_path / "np")
    names = sorted(p.name for p in written.iterdir())
    assert names == ["batch-0.json", "explanations.json", "skipped_indexes.json"]
    assert all((written / name).read_bytes() == (FIXTURE / name).read_bytes() for name in names)


def test_export_carries_the_statistics_contexts_and_explanations(tmp_path):
    sae = saved_sae(tmp_path / "sae")
    out = export_sae(sae, tmp_path / "np", "neuronpedia")
    features = {f["feature_index"]: f for f in check_structure(out)}
    stats = sae.features.stats
    fired = stats.index[stats["count"] > 0].tolist()
    assert DEAD not in fired and sorted(features) == fired  # the dead ones go to skipped_indexes.json
    assert json.loads((out / "skipped_indexes.json").read_text())["skipped_indexes"] == sorted(
        set(range(48)) - set(fired)
    )
    i = fired[0]
    feature, row = features[i], sae.features[i]
    assert feature["frac_nonzero"] == pytest.approx(row.frequency)
    assert feature["pos_str"] == list(row.promoted_tokens) and len(feature["pos_str"]) == 4
    assert feature["pos_values"] == pytest.approx(list(row.promoted_logits), abs=1e-3)
    assert feature["correlated_features_indices"] == list(row.neighbour_ids)
    assert sum(feature["freq_hist_data_bar_heights"]) == row.count  # every firing in one histogram bar
    assert sum(feature["logits_hist_data_bar_heights"]) == VOCAB_SIZE  # every vocabulary entry
    top = [a for a in feature["activations"] if a["bin_min"] == -1]
    assert [a["tokens"] for a in top] == [e["tokens"] for e in row.examples]
    assert top[0]["values"][top[0]["qualifying_token_index"]] == pytest.approx(row.max_activation, abs=1e-3)
    sampled = [a for a in feature["activations"] if a["bin_min"] != -1]
    assert len(sampled) == len(row.quantile_examples)
    assert all(a["bin_min"] <= a["values"][a["qualifying_token_index"]] + 1e-3 for a in sampled)
    header = json.loads((out / "batch-0.json").read_text())
    assert (header["model_id"], header["layer"], header["sae_set"]) == ("tiny-lm", 1, "hf-sae")
    explanations = json.loads((out / "explanations.json").read_text())
    assert [(e["index"], e["description"], e["explanationModelName"]) for e in explanations] == [
        ("3", "w7 words", "tiny-explainer"),
        ("5", "five", None),
    ]
    assert all(e["layer"] == "1-hf-sae" for e in explanations)


def test_histogram_bars_sit_at_geometric_bin_centres(tmp_path):
    sae = saved_sae(tmp_path / "sae")
    feature = check_structure(export_sae(sae, tmp_path / "np", "neuronpedia"))[0]
    edges = sae.features.metadata["histogram_edges"]
    counts = sae.features[feature["feature_index"]].histogram
    expected = [math.sqrt(edges[b] * edges[b + 1]) for b, n in enumerate(counts) if n]
    assert feature["freq_hist_data_bar_values"] == pytest.approx(expected, rel=1e-3)


def test_an_sae_without_features_is_refused_with_the_command_to_make_them(tmp_path):
    sae = tiny_sae(24)
    sae.save_pretrained(tmp_path / "bare")
    with pytest.raises(FeatureMetadataError, match="hf-sae features"):
        export_sae(SaeModel.from_pretrained(tmp_path / "bare"), tmp_path / "np", "neuronpedia")
    assert not (tmp_path / "np").exists()


def test_layer_comes_from_the_hookpoint():
    assert neuronpedia_layer("model.layers.6.mlp", "HuggingFaceTB/SmolLM2-135M") == 6
    assert neuronpedia_layer("transformer.h.11", "gpt2") == 11
    with pytest.raises(FeatureMetadataError, match="'model.embed_tokens'"):
        neuronpedia_layer("model.embed_tokens", None)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(write_fixture())


def test_hf_sae_convert_to_neuronpedia_writes_what_the_readers_accepted(tmp_path):
    from hf_sae.cli import main

    saved_sae(tmp_path / "sae")
    assert main(["convert", str(tmp_path / "sae"), str(tmp_path / "np"), "--to", "neuronpedia"]) == 0
    assert check_structure(tmp_path / "np") == check_structure(FIXTURE)
