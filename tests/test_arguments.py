"""arguments/: each command's `--help` in one section per argument group, and the defaults that follow the run."""

import dataclasses
import re

import pytest

from hf_sae.arguments import (
    TRAIN_GROUPS,
    CacheArguments,
    DataArguments,
    EvalDataArguments,
    EvaluationArguments,
    SaeTrainingArguments,
)
from hf_sae.arguments import LanguageModelArguments as LmArguments
from hf_sae.cli import main


def help_sections(command: str, capsys) -> dict[str, list[str]]:
    """`hf-sae COMMAND --help` as {section title: the flags listed under it, in order}."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    sections, title = {}, None
    for line in capsys.readouterr().out.splitlines():
        if heading := re.fullmatch(r"(\S.*):", line):
            title = heading.group(1)
            sections[title] = []
        elif title and (flag := re.match(r"  (--\w+)(?:[ ,]|$)", line)):  # not a wrapped description
            sections[title].append(flag.group(1))
    return sections


@pytest.mark.parametrize(
    "command, groups",
    [("train", TRAIN_GROUPS), ("eval", (LmArguments, EvalDataArguments, EvaluationArguments)),
     ("cache", (LmArguments, DataArguments, CacheArguments))],
)  # fmt: skip
def test_help_lists_each_flag_under_its_group_titled_and_described(command, groups, capsys):
    sections = help_sections(command, capsys)
    titles = [group._argument_group_name for group in groups]
    assert list(sections) == ["options", *titles]  # argparse's own (--help), then one per group, in order
    for group in groups:
        title = group._argument_group_name
        assert title in sections, f"no {title!r} section in {list(sections)}"
        expected = [f"--{field.name}" for field in dataclasses.fields(group)]
        assert [flag for flag in sections[title] if not flag.startswith("--no_")] == expected
    assert sum(map(len, sections.values())) == sum(
        len(dataclasses.fields(g)) + sum(f.default is True for f in dataclasses.fields(g)) for g in groups
    )  # every flag once (and each `--no_` of a flag that defaults to true), none outside its group


def test_each_help_section_says_what_its_group_is_for(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the descriptions
    for group in TRAIN_GROUPS:
        assert f"{group._argument_group_name}: {group.__doc__.strip()}" in text


@pytest.mark.parametrize(
    "train_tokens, context_size, expected",
    [(1_000_000, 256, 100_000), (200_000, 256, 20_000), (4096, 256, 410), (1024, 256, 256), (10**9, 256, 100_000)],
)
def test_the_held_out_budget_is_a_tenth_of_training_one_block_to_100k(train_tokens, context_size, expected):
    args = SaeTrainingArguments(train_tokens=train_tokens, batch_size=64, report_to="none")
    assert args.eval_tokens is None and args.held_out_tokens(context_size, train_tokens) == expected
    for explicit in (0, 7, 250_000):  # a number given is kept as given, 0 skipping the report
        given = dataclasses.replace(args, eval_tokens=explicit)
        assert given.held_out_tokens(context_size, train_tokens) == explicit


def test_every_command_help_prints_a_described_section_per_group(capsys):
    from hf_sae.cli import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0, command
        titles = re.findall(r"^(\S[^\n]*):\n(  \S[^\n]*)?", text, flags=re.MULTILINE)
        assert len(titles) >= 2 and titles[0] == ("options", "  -h, --help            show this help message and exit")
        assert all(not description.startswith("  -") for _, description in titles[1:]), (command, titles)
