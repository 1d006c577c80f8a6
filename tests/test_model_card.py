"""The model card's parts: readable metric names, the training text, the run's arguments and what is missing."""

import json

import torch

from hf_sae import SaeConfig, SaeModel
from hf_sae.layout import QUALITY_KEYS
from hf_sae.model_card import (
    CORPUS_SOURCES,
    METRIC_LABELS,
    copy_run_files,
    dataset_description,
    metric_label,
    metrics_to_eval_results,
    render_card,
    run_arguments_file,
    run_files,
)
from hf_sae.offline import corpus

HOOKPOINT = "model.layers.3"


def saved_sae(folder):
    torch.manual_seed(0)
    SaeModel(SaeConfig(d_in=8, num_latents=32, architecture="topk", k=2, hookpoint=HOOKPOINT)).save_pretrained(folder)
    return folder


def test_every_quality_metric_has_a_readable_name_and_the_dense_one_says_its_threshold():
    assert set(METRIC_LABELS) == set(QUALITY_KEYS)
    assert all(name != key and description for key, (name, description) in METRIC_LABELS.items())
    assert metric_label("dense_fraction")[0] == "Dense latents (fire on > 10% of tokens)"
    assert metric_label("dense_fraction", {"dense_threshold": 0.05})[0] == "Dense latents (fire on > 5% of tokens)"
    assert metric_label("new_metric") == ("new_metric", "")
    results = metrics_to_eval_results({HOOKPOINT: {"dense_fraction": 0.5, "fvu": 0.1, "train_tokens": 9}})
    assert [(r.metric_type, r.metric_name) for r in results] == [
        ("dense_fraction", "Dense latents (fire on > 10% of tokens)"),
        ("fvu", "Fraction of variance unexplained"),
    ]


def test_the_built_in_corpus_is_named_by_its_sources():
    source = open(corpus.__file__).read()  # the names its `source` column takes
    assert all(f'"{name}"' in source for name in CORPUS_SOURCES)
    text = dataset_description("built-in corpus")
    assert text.startswith("hf_sae's built-in corpus of English prose: the Brown corpus")
    assert "news articles" in text and "Wikipedia articles" in text and "parliament debates" in text
    assert dataset_description(None) == text
    assert (
        dataset_description("Salesforce/wikitext")
        == "[`Salesforce/wikitext`](https://huggingface.co/datasets/Salesforce/wikitext)"
    )
    assert dataset_description("/data/my.jsonl") == "`/data/my.jsonl`"


def test_run_arguments_are_found_beside_or_above_the_sae_folder(tmp_path):
    run = tmp_path / "run"
    sae = saved_sae(run / HOOKPOINT)
    assert run_arguments_file(sae) is None
    (run / "training_args.json").write_text(json.dumps({"learning_rate": 0.002}))
    assert run_arguments_file(sae) == run / "training_args.json"  # the run that saved it as a hookpoint folder
    link = tmp_path / "linked"
    saved_sae(link)
    (link / "training_args.json").symlink_to(run / "training_args.json")
    assert run_arguments_file(link) is None  # a link could point at any file of this machine


def test_copy_run_files_brings_metrics_features_and_arguments_and_keeps_what_is_there(tmp_path):
    run = tmp_path / "run"
    sae = saved_sae(run / HOOKPOINT)
    (sae / "metrics.json").write_text(json.dumps({"fvu": 0.3}))
    (sae / "features").mkdir()
    (sae / "features" / "metadata.json").write_text("{}")
    (run / "training_args.json").write_text(json.dumps({"learning_rate": 0.002}))
    assert set(run_files(sae)) == {"metrics.json", "features", "training_args.json"}
    assert run_files(None) == {} and run_files(tmp_path / "missing") == {}
    target = saved_sae(tmp_path / "push")
    (target / "metrics.json").write_text(json.dumps({"fvu": 0.1}))  # what the push was given wins
    copy_run_files(sae, target)
    assert json.loads((target / "metrics.json").read_text()) == {"fvu": 0.1}
    assert (target / "features" / "metadata.json").is_file()
    assert json.loads((target / "training_args.json").read_text()) == {"learning_rate": 0.002}


def test_card_of_an_sae_with_nothing_beside_it_names_each_missing_part(tmp_path):
    text = render_card({HOOKPOINT: saved_sae(tmp_path / "sae")}, "sae", "me/sae", {}, True).text
    assert "pip install hf-sae" in text and 'sae = SaeModel.from_pretrained("me/sae")' in text
    assert "No evaluation metrics were saved with this SAE" in text
    assert "No training arguments were saved with this SAE." in text
    assert "The training text was not recorded." in text
    assert "No feature metadata (`features/`) was saved with this SAE" in text
    assert "## Features" not in text


def test_card_states_the_share_of_features_with_a_clear_pattern_its_threshold_and_the_text(tmp_path):
    from hf_sae.interpretability import interpretability_summary

    folder = saved_sae(tmp_path / "sae")
    scores, frequencies = [0.9, 0.6, 0.1, 0.0, float("nan")], [0.2, 0.001, 0.003, 0.02, 0.0]
    summary = interpretability_summary(scores, frequencies)
    assert summary["clear_pattern_share"] == 0.5 and summary["dense_latents"] == 2  # 2 of 4 that fired; 2 over 1%
    (folder / "features").mkdir()
    text = {"split": "train[every 50th document]", "held_out": True, "training_eval_split": None}
    (folder / "features" / "metadata.json").write_text(json.dumps({"interpretability": summary, "text": text}))
    card = render_card({HOOKPOINT: folder}, "sae", "me/sae", {}, True).text
    assert "| `model.layers.3` | held-out text (train[every 50th document]) | 50% of 4 | 2 |" in card
    assert "interpretability score reaches 0.5" in card and "3 / (1/c + 1/r + 1/p)" in card
    assert "fire on more than 1% of the tokens described" in card
