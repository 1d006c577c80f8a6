"""cli.py: the terminal tables, and the parser every subcommand shares."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_llama_and_corpus
from transformers import AutoModelForCausalLM

from hf_sae import ArgumentError
from hf_sae.arguments import PushArguments
from hf_sae.cli import format_report, format_training_report, parse_arguments

PER_SOURCE_REPORT = {
    "model.layers.15": {
        "architecture": "topk", "num_latents": 9216, "train_tokens": 4096, "fvu": 0.25, "l0": 32.0,
        "dead_fraction": 0.0, "train_dead_fraction": 0.0,
        "per_source": {"brown": {"fvu": 0.2, "l0": 31.5, "eval_tokens": 600},
                       "news": {"fvu": 0.31, "l0": 32.5, "loss_recovered": 0.9, "eval_tokens": 400}},
    }
}  # fmt: skip


def test_the_tables_show_each_source_beside_the_pooled_numbers():
    for table in (format_report(PER_SOURCE_REPORT), format_training_report(PER_SOURCE_REPORT, "out")):
        assert "model.layers.15 on brown: fvu 0.2000, l0 31.5000, 600 tokens" in table
        assert "model.layers.15 on news: fvu 0.3100, l0 32.5000, loss_recovered 0.9000, 400 tokens" in table
    assert "Per source" not in format_report({"h": {"fvu": 0.2}})


def test_none_sets_an_optional_field_and_a_config_file_sets_defaults(tmp_path):
    (args,) = parse_arguments((PushArguments,), ["--sae", "s", "--repo_id", "a/b", "--revision", "none"], "push")
    assert args.revision is None
    config = tmp_path / "push.yaml"
    config.write_text("sae: s\nrepo_id: a/b\ntags: [x, y]\nlicense: null\n")
    (args,) = parse_arguments((PushArguments,), [str(config), "--private", "true"], "push")
    assert (args.sae, args.repo_id, args.tags, args.license, args.private) == ("s", "a/b", ["x", "y"], None, True)
    config.write_text("sae: s\nrepo_id: a/b\nrepo: typo\n")
    with pytest.raises(ArgumentError, match=r"sets \['repo'\], which `push` does not take"):
        parse_arguments((PushArguments,), [str(config)], "push")


def test_a_null_in_a_config_file_means_none_where_allowed_and_the_default_elsewhere(tmp_path):
    from hf_sae.arguments import TRAIN_GROUPS, DataArguments, SaeTrainingArguments

    config = tmp_path / "train.yaml"
    config.write_text("batch_size: null\nlearning_rate: null\nshuffle_seed: null\ndataset_split: null\n")
    groups = parse_arguments(TRAIN_GROUPS, [str(config)], "train")
    data, training = (next(g for g in groups if isinstance(g, kind)) for kind in (DataArguments, SaeTrainingArguments))
    assert (training.batch_size, data.dataset_split) == (4096, "train")  # the defaults
    assert data.shuffle_seed is None and DataArguments.shuffle_seed == 0  # can be None: keeps the stored order
    assert training.learning_rate is None  # can be None: resolved by the kind of run (`budgets.default_run`)


def test_an_error_during_a_progress_bar_starts_on_its_own_line(tmp_path):
    save_tiny_llama_and_corpus(tmp_path, num_words=90, hidden_size=24, intermediate_size=37, num_layers=2, heads=4,
                               kv_heads=2, documents={"train": 100}, words_per_document=(20, 60))  # fmt: skip
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    with torch.no_grad():  # the fault: NaN activations from layer 0 on, which training refuses mid-way
        lm.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    lm.save_pretrained(tmp_path / "lm")
    flags = {"model_name_or_path": tmp_path / "lm", "dataset_name": tmp_path / "text", "hookpoints": "model.layers.1",
             "k": 4, "expansion_factor": 4, "context_size": 32, "train_tokens": 2048, "batch_size": 256,
             "shuffle_buffer_tokens": 1024, "output_dir": tmp_path / "run", "report_to": "none", "eval_tokens": 0,
             "lm_dtype": "float32"}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("HF_SAE_DEBUG", None)
    command = [sys.executable, "-m", "hf_sae.cli", "train", *(str(x) for k, v in flags.items() for x in (f"--{k}", v))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    before, _, after = done.stderr.rpartition("hf-sae train: error: ")
    assert done.returncode == 1 and after, done.stderr[-2000:]
    assert "step/s]" in before.rsplit("\n", 2)[-2]  # the condition: a bar was drawn on the line above the error
    assert before.endswith("\n") and "Traceback" not in done.stderr  # the message starts a line of its own


@pytest.mark.parametrize("verbose", [False, True])
def test_other_libraries_info_logs_show_only_with_verbose(verbose):
    """hf_sae's own INFO lines always show; an HTTP client's INFO request lines only with --verbose."""
    script = (
        "import logging, sys\n"
        "from hf_sae import cli\n"
        "def command(argv):\n"
        "    print('argv', argv, file=sys.stderr)\n"
        "    logging.getLogger('httpx').info('HTTP Request: GET http://hub/api')\n"
        "    logging.getLogger('hf_sae.hub').info('pulled 1 SAE')\n"
        "    return 0\n"
        "cli.COMMANDS['pull'] = (command, '')\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    flags = ["--repo_id", "x"] + (["--verbose"] if verbose else [])
    done = subprocess.run([sys.executable, "-c", script, "pull", *flags], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "argv ['--repo_id', 'x']" in done.stderr  # the command ran, without the flag
    assert "INFO hf_sae.hub: pulled 1 SAE" in done.stderr
    assert ("HTTP Request" in done.stderr) == verbose


def test_the_tables_fit_long_names_and_keep_every_column_in_place():
    long = "model.layers.15/topk_k64_lr3e-4_matryoshka"
    metrics = {"num_latents": 9216, "train_tokens": 1_000_000, "fvu": 0.25, "l0": 32.0, "dead_fraction": 0.01,
               "train_dead_fraction": 0.0}  # fmt: skip
    report = {long: {**metrics, "architecture": "matryoshka_batchtopk"}, "h": {**metrics, "architecture": "topk"}}
    header, *rows = format_training_report(report, "out").splitlines()[2:5]
    assert rows[0].startswith(long + "  ") and rows[1].startswith("h ")  # the name whole, never cut
    for row, arch in zip(rows, ("matryoshka_batchtopk", "topk")):
        assert row.index(arch) == header.index("arch")  # names end before the next column, in every row
        assert len(row) == len(header)  # the numbers are right-aligned under their header's end
        for value, title in (
            ("9,216", "latents"),
            ("1,000,000", "tokens"),
            ("0.250", "FVU"),
            ("32.0", "L0"),
            ("1.0", "dead %"),
        ):
            assert row.index(value) + len(value) == header.index(title) + len(title)
    lines = format_report({long: {"fvu": 0.25, "l0": 32.0}, "h": {"fvu": 0.5, "l0": 8.0}}).splitlines()
    assert lines[0].split() == [long, "h"] and len({len(line) for line in lines}) == 1
    assert lines[1].index("0.2500") + 6 == lines[0].index(long) + len(long)
