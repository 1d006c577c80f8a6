"""The `hf-sae` console script: `--help` and `--version` in a blink, without importing torch.

`import hf_sae` imports torch and transformers (it registers SaeModel with AutoModel), seconds before a word of help
could print. So the console script is this top-level module (any module inside hf_sae would run hf_sae/__init__
first): it prints help from the texts stored in hf_sae/cli_help/, rendered by the real parsers
(`hf_sae.cli.help_text`, at a fixed width), and the version from hf_sae/version.py read as text. Every other call goes
to `hf_sae.cli.main`, unchanged. After a change to a command's arguments, regenerate the texts with
`python -c "import hf_sae_cli; hf_sae_cli.write_help_texts()"` (tests/test_cli_help.py checks them).

`hf-sae COMMAND ... --help` prints the stored text where the real parser would print its help, except that a
malformed value before `--help` is not checked; a YAML / JSON file among the arguments (its values would become the
defaults the help shows) and arguments after `--` go to the real parser.
"""

import re
import sys
from importlib.util import find_spec
from pathlib import Path

HELP_FLAGS = ("-h", "--help")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # hf_sae.cli's: the argument files
TOP_LEVEL = "hf-sae"  # the stored name of `hf-sae --help`; a command's help is stored under the command's name


def _package_folder() -> Path | None:
    spec = find_spec("hf_sae")  # finds the package without running its __init__
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def help_folder() -> Path | None:
    folder = _package_folder()
    return folder / "cli_help" if folder else None


def _stored(name: str) -> str | None:
    """The stored help of `name` (a command, or TOP_LEVEL); None where there is none, as for an unknown command."""
    folder = help_folder()
    paths = {path.stem: path for path in folder.glob("*.txt")} if folder else {}
    return paths[name].read_text(encoding="utf-8") if name in paths else None


def _version_line() -> str | None:
    folder = _package_folder()
    source = (folder / "version.py").read_text(encoding="utf-8") if folder else ""
    found = re.search(r"^__version__ = \"([^\"]+)\"$", source, flags=re.MULTILINE)
    return f"hf-sae {found.group(1)}\n" if found else None


def stored_answer(argv: list[str]) -> str | None:
    """What `hf_sae.cli.main(argv)` prints where that is help or the version; None for any other call."""
    if not argv or argv[0] in HELP_FLAGS:
        return _stored(TOP_LEVEL)
    if argv[0] == "--version":
        return _version_line()
    command, args = argv[0], argv[1:]
    args = args[: args.index("--")] if "--" in args else args
    if command == TOP_LEVEL or not any(arg in HELP_FLAGS for arg in args):
        return None
    if any(arg.endswith(CONFIG_SUFFIXES) for arg in args):
        return None
    return _stored(command)  # None for an unknown command: the real parser names the choices


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    answer = stored_answer(argv)
    if answer is None:
        from hf_sae.cli import main as cli_main

        return cli_main(argv)
    sys.stdout.write(answer)
    return 0


def write_help_texts() -> list[Path]:
    """Render every command's help with the real parsers into hf_sae/cli_help/, replacing the texts there."""
    from hf_sae.cli import COMMANDS, help_text

    folder = help_folder()
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.txt"):
        stale.unlink()
    written = []
    for command in (None, *COMMANDS):
        path = folder / f"{command or TOP_LEVEL}.txt"
        path.write_text(help_text(command), encoding="utf-8")
        written.append(path)
    return written
