"""The documentation's examples: every Python example of README.md and docs/*.md runs, a page's examples in order in
one namespace as a reader runs them; every `hf-sae <subcommand> --flag` the pages name exists.

An HTML comment just before a fence marks an example: `<!-- no-test: reason -->` (it needs a GPU, the network, or
something else this machine lacks) or `<!-- slow: reason -->` (it loads SmolLM2 or trains). The fast suite runs each
page's examples up to its first slow one; the slow test runs every page in full, in the site's order, in one folder,
so that a page may use what an earlier page saved (the hooks page loads the SAE the training page trains).
"""

import dataclasses
import inspect
import linecache
import re
import shlex
from pathlib import Path

import pytest
import yaml

from hf_sae import arguments as A
from hf_sae.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"^<!--\s*(no-test|slow)\s*:?\s*(.*?)\s*-->$")
ALWAYS_ACCEPTED = {"help", "debug", "verbose"}  # the parser's own and `hf-sae`'s global flags
# What an unmarked example must not do: the fast suite has no time for SmolLM2 or training.
HEAVY = ("load_model(", "train_saes(", "run_features(", "run_evaluation(", "outputs/sae")


@dataclasses.dataclass
class Example:
    page: str
    line: int
    language: str
    code: str
    mark: str | None = None  # "no-test" or "slow"
    reason: str = ""


def pages() -> list[Path]:
    """README.md, then the site's pages in the order of mkdocs.yml's nav."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [ROOT / "README.md", *(ROOT / "docs" / file for entry in nav for file in entry.values())]


def examples(path: Path) -> list[Example]:
    """The fenced code blocks of a page, each with the mark of the comment right before it."""
    found, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i] != "```":
            start, end = i, lines.index("```", i + 1)
            mark = MARK.match(lines[start - 1]) if start else None
            example = Example(path.name, start + 1, lines[start][3:].strip(), "\n".join(lines[start + 1 : end]))
            if mark:
                example.mark, example.reason = mark.group(1), mark.group(2)
            found.append(example)
            i = end
        i += 1
    return found


def python_examples(path: Path) -> list[Example]:
    return [e for e in examples(path) if e.language == "python"]


def fast_prefix(path: Path) -> list[Example]:
    """A page's examples before its first slow one (later ones may need what a slow one made)."""
    prefix = []
    for example in python_examples(path):
        if example.mark == "slow":
            break
        prefix.append(example)
    return prefix


def run_page(path: Path, page_examples: list[Example]) -> int:
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for example in page_examples:
        if example.mark == "no-test":
            continue
        name = f"{path.name}:{example.line}"
        linecache.cache[name] = (len(example.code), None, example.code.splitlines(True), name)  # nnsight reads it
        try:
            exec(compile(example.code, name, "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"The example at {path.name}:{example.line} failed: {error!r}") from error
        ran += 1
    return ran


def test_every_page_of_the_site_exists_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text()
    for path in pages()[1:]:
        assert path.is_file(), path
        assert f"(docs/{path.name}" in readme, f"README.md does not link docs/{path.name}"


def test_every_marked_example_gives_a_reason_and_marks_a_python_fence():
    marks = 0
    for path in pages():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("<!--") or not MARK.match(line):
                continue
            marks += 1
            kind, reason = MARK.match(line).groups()
            assert len(reason.split()) >= 2, f"{path.name}:{number + 1}: say why the example is {kind}"
            assert lines[number + 1] == "```python", f"{path.name}:{number + 1}: the mark must precede a python fence"
    assert marks >= 5  # the pages mark their heavy and offline-impossible examples


def test_heavy_examples_are_marked():
    unmarked = [f"{path.name}:{e.line}" for path in pages() for e in python_examples(path)
                if e.mark is None and any(word in e.code for word in HEAVY)]  # fmt: skip
    assert not unmarked, f"examples that load SmolLM2 or train, not marked slow: {unmarked}"


FAST_PAGES = [path for path in pages() if any(e.mark is None for e in fast_prefix(path))]


def test_fast_pages_are_found():
    assert {"README.md", "index.md", "circuits.md"} <= {path.name for path in FAST_PAGES}


@pytest.mark.parametrize("path", FAST_PAGES, ids=lambda path: path.name)
def test_the_fast_examples_of_a_page_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_page(path, fast_prefix(path)) >= 1
    assert any(tmp_path.iterdir())  # every fast page saves something: the examples really ran here


@pytest.mark.slow
def test_every_example_runs_in_the_order_of_the_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = sum(run_page(path, python_examples(path)) for path in pages())
    skipped = sum(e.mark == "no-test" for path in pages() for e in python_examples(path))
    assert ran + skipped == sum(len(python_examples(path)) for path in pages())
    assert (tmp_path / "outputs" / "sae" / "model.layers.15" / "features").is_dir()


# ---- shell examples -------------------------------------------------------------------------------------------------


def command_flags() -> dict[str, set[str]]:
    """Each subcommand's flags: the fields of the argument dataclasses its function in hf_sae.cli parses."""
    flags = {}
    for name, (function, _) in COMMANDS.items():
        groups = []
        for attribute in re.findall(r"\bA\.(\w+)", inspect.getsource(function)):
            value = getattr(A, attribute)
            groups.extend(value if isinstance(value, tuple) else [value])
        assert groups, f"no argument dataclass found for hf-sae {name}"
        flags[name] = {field.name for group in groups for field in dataclasses.fields(group)} | ALWAYS_ACCEPTED
    return flags


def invocations(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, flags) of every `hf-sae ...` in the shell blocks and the inline code spans of a page."""
    found = []
    spans = re.findall(r"`(hf-sae [^`\n]+)`", text)
    blocks = re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.M | re.S)
    lines = [line.split(" #")[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    for command in spans + [line[line.index("hf-sae ") :] for line in lines if "hf-sae " in line]:
        command = command.split(" #")[0].split("|")[0]
        words = shlex.split(command) if "'" not in command else command.split()  # YAML in quotes: words suffice
        if len(words) > 1 and not words[1].startswith("-"):
            found.append((words[1], [w[2:].split("=")[0] for w in words[2:] if w.startswith("--")]))
    return found


def unknown_flags(text: str, flags: dict[str, set[str]]) -> list[str]:
    wrong = []
    for command, named in invocations(text):
        if command not in flags:
            wrong.append(f"hf-sae {command}")
        wrong += [f"hf-sae {command} --{flag}" for flag in named if command in flags and flag not in flags[command]]
    return wrong


def test_the_flag_check_catches_a_wrong_subcommand_or_flag():
    flags = command_flags()
    assert "clt_layers" in flags["train"] and "lm_metrics" in flags["eval"] and "transcoders" in flags["attribute"]
    block = "```bash\nhf-sae trian --k 8\nhf-sae eval --sae a \\\n  --kk 3  # a comment --not_a_flag\n```\n"
    text = "`hf-sae train --k 8 --no_such_flag 1` and\n" + block
    assert sorted(unknown_flags(text, flags)) == ["hf-sae eval --kk", "hf-sae train --no_such_flag", "hf-sae trian"]


def test_every_subcommand_and_flag_the_docs_name_exists():
    flags, checked, wrong = command_flags(), 0, []
    for path in pages():
        text = path.read_text()
        checked += sum(len(named) for _, named in invocations(text))
        wrong += [f"{path.name}: {w}" for w in unknown_flags(text, flags)]
    assert checked > 100  # the pages' commands were found and read
    assert not wrong, wrong


def test_the_readme_command_table_lists_every_subcommand():
    table = (ROOT / "README.md").read_text().split("## Commands")[1].split("\n## ")[0]
    assert {name for name in COMMANDS if f"| `hf-sae {name}" not in table} == set()
