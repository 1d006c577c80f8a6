"""The `hf-sae` console script (hf_sae_cli.py): help and the version printed from stored texts without importing
hf_sae, torch or transformers; every other call handed to `hf_sae.cli.main`, with its messages and exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hf_sae_cli
from hf_sae.cli import COMMANDS, CONFIG_SUFFIXES, help_text
from hf_sae.cli import main as real_main
from hf_sae.version import __version__

REGENERATE = 'python -c "import hf_sae_cli; hf_sae_cli.write_help_texts()"'
CONSOLE_SCRIPT = Path(sys.executable).parent / "hf-sae"


def stored(name: str) -> str:
    return (hf_sae_cli.help_folder() / f"{name}.txt").read_text(encoding="utf-8")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A fresh process outside the repository, so that hf_sae_cli is the installed one."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_stored_texts_are_one_per_command_and_the_top_level():
    names = {path.stem for path in hf_sae_cli.help_folder().glob("*.txt")}
    assert names == {hf_sae_cli.TOP_LEVEL, *COMMANDS}, f"regenerate them: {REGENERATE}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_each_stored_text_is_the_live_help_whatever_the_terminal_width(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "57")  # argparse would wrap at this width were it not fixed
    live = help_text(command)
    assert live.startswith(f"usage: hf-sae {command or '[--version]'}")
    assert max(map(len, live.splitlines())) > 57  # the width in force is the fixed one, not the terminal's
    assert stored(command or hf_sae_cli.TOP_LEVEL) == live, f"{command}'s stored help is stale: run {REGENERATE}"


def test_a_flag_that_states_its_default_gets_no_second_default():
    text = " ".join(help_text("train").split())  # wrapped lines joined
    assert "Adam learning rate. Default: 0.002 in the default run (see --train_tokens), 0.001 otherwise. --lr" in text
    assert "Fraction of steps with linear lr warm-up. (default: 0.02)" in text  # the others keep argparse's
    for command in COMMANDS:
        for flag in " ".join(help_text(command).split()).split(" --")[1:]:
            assert not ("Default:" in flag and "(default:" in flag), f"{command}: --{flag}"


def test_help_text_is_what_the_command_prints(capsys):
    with pytest.raises(SystemExit) as done:
        real_main(["convert", "--help"])
    assert done.value.code == 0 and capsys.readouterr().out == help_text("convert")
    assert real_main([]) == 0 and capsys.readouterr().out == help_text(None)


def test_help_prints_without_importing_hf_sae_torch_or_transformers(tmp_path):
    heavy = ("torch", "hf_sae", "transformers")
    code = (
        "import json, sys, hf_sae_cli; code = hf_sae_cli.main(['train', '--k', '8', '--help']); "
        f"print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})]))"
    )
    done = run([sys.executable, "-c", code], tmp_path)
    *printed, last = done.stdout.splitlines(keepends=True)
    assert done.returncode == 0, done.stderr
    assert "".join(printed) == stored("train")
    assert json.loads(last) == [0, []]


@pytest.mark.parametrize(
    "argv, name",
    [([], "hf-sae"), (["-h"], "hf-sae"), (["--help", "train"], "hf-sae"), (["eval", "--help"], "eval"),
     (["convert", "SRC", "DST", "--to", "saelens", "-h", "--debug"], "convert")],
)  # fmt: skip
def test_help_calls_get_their_stored_text(argv, name):
    assert hf_sae_cli.stored_answer(argv) == stored(name)


@pytest.mark.parametrize(
    "argv",
    [["train"], ["train", "--k", "8"], ["train", "run.yaml", "--help"], ["convert", "a", "b.json", "--help"],
     ["train", "--", "--help"], ["hf-sae", "--help"], ["trian", "--help"], ["--verbose"]],
)  # fmt: skip
def test_other_calls_go_to_the_real_command_line(argv):
    """An argument file's values would be the defaults that help shows; an unknown command is the real parser's
    error."""
    assert set(CONFIG_SUFFIXES) == set(hf_sae_cli.CONFIG_SUFFIXES)
    assert hf_sae_cli.stored_answer(argv) is None


def test_an_unknown_command_with_help_gets_the_real_parsers_error(capsys):
    with pytest.raises(SystemExit) as done:
        hf_sae_cli.main(["trian", "--help"])
    assert done.value.code == 2
    assert "hf-sae: error: argument COMMAND: invalid choice: 'trian'" in capsys.readouterr().err


def test_the_console_script_prints_help_and_version_and_runs_the_real_command(tmp_path, capsys):
    assert CONSOLE_SCRIPT.is_file(), f"no {CONSOLE_SCRIPT}: install the package (pip install -e .)"
    assert "hf_sae_cli" in CONSOLE_SCRIPT.read_text()  # the launcher, not hf_sae.cli directly
    helped = run([str(CONSOLE_SCRIPT), "train", "--help"], tmp_path)
    assert (helped.returncode, helped.stdout, helped.stderr) == (0, stored("train"), "")
    version = run([str(CONSOLE_SCRIPT), "--version"], tmp_path)
    with pytest.raises(SystemExit):
        real_main(["--version"])
    assert (version.returncode, version.stdout) == (0, capsys.readouterr().out) == (0, f"hf-sae {__version__}\n")
    failed = run([str(CONSOLE_SCRIPT), "train", "--k", "0"], tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith("hf-sae train: error: --k must be a positive integer for topk; got 0.")
