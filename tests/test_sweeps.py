"""Sweep entries: a name is a folder inside the run's output folder, never a path, never one of the run's own files or
checkpoints; an inline sweep is never taken for a file name. Each case is refused before anything is trained."""

from pathlib import Path

import pytest

from hf_sae.arguments import SaeArguments
from hf_sae.checkpoints import checkpoint_folders
from hf_sae.errors import ArgumentError
from hf_sae.layout import METRICS, TRAINING_ARGS
from hf_sae.sweeps import read_sweep, sweep_runs


def runs(sweep):
    return sweep_runs(SaeArguments(sweep=sweep), 1e-3)


def test_a_sweep_named_like_a_checkpoint_would_be_resumed_from_so_it_is_refused(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-99").mkdir()  # where a sweep entry named so would put its SAEs
    assert checkpoint_folders(tmp_path)[-1].name == "checkpoint-99"  # the condition: `latest` would pick it
    for name in ("checkpoint-99", "Checkpoint-7", "checkpoint-x"):
        with pytest.raises(ArgumentError, match=rf"`name` '{name}' clashes with 'checkpoint-\*', which hf_sae writes"):
            runs([{"k": 4, "name": name}])


@pytest.mark.parametrize("name", [METRICS, TRAINING_ARGS, "eval_results.json", "README.md", "hf_sae", "METRICS.JSON"])
def test_a_sweep_named_like_a_file_of_the_run_is_refused(name):
    with pytest.raises(ArgumentError, match=rf"entry 1 .*`name` '{name}' clashes with '.*', which hf_sae writes in"):
        runs([{"k": 4}, {"k": 8, "name": name}])


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "a\\b", ".hidden", "..", "x" * 256])
def test_a_sweep_name_that_is_a_path_is_refused(name):
    with pytest.raises(ArgumentError, match=r"`name` .* must be a folder name: one name of at most 255 bytes"):
        runs([{"k": 4, "name": name}])


def test_names_that_differ_only_in_case_are_one_folder_on_some_file_systems():
    with pytest.raises(ArgumentError, match=r"several entries named \['wide'\]"):
        runs([{"k": 4, "name": "Wide"}, {"k": 8, "name": "wide"}])


def test_an_inline_sweep_longer_than_a_file_name_is_read_inline(tmp_path):
    entries = [{"k": k, "learning_rate": 1e-3 * k, "name": f"configuration-{k}"} for k in range(2, 9)]
    inline = str(entries).replace("'", "")  # [{k: 2, learning_rate: 0.002, name: configuration-2}, ...]
    assert len(inline.encode()) > 255  # the condition: the old check, Path(value).is_file(), fails on it
    with pytest.raises(OSError, match="File name too long"):
        Path(inline).is_file()
    assert [run.name for run in runs(inline)] == [e["name"] for e in entries]
    block = "\n".join(f"- {{k: {e['k']}}}" for e in entries)  # a block list too
    assert [run.sae_args.k for run in runs(block)] == list(range(2, 9))


def test_a_sweep_file_is_read_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "sweep.yaml").write_text("- {k: 16}\n- {k: 64}\n")
    assert read_sweep(str(tmp_path / "sweep.yaml")) == [{"k": 16}, {"k": 64}]
    with pytest.raises(ArgumentError, match=r"--sweep '.*nope.yaml' is neither a readable YAML file \(No such file"):
        read_sweep(str(tmp_path / "nope.yaml"))
