"""The `hf-sae` command line: thin subcommands that parse argument dataclasses and call the runners.

hf-sae prepare-corpus                 download the built-in offline corpus (once)
hf-sae train [--flag value ...]       train SAEs; also `hf-sae train config.yaml` or a saved training_args.json
hf-sae cache --output_dir DIR         harvest activations once, for `hf-sae train --activation_cache DIR` (many times)
hf-sae eval --sae PATH --output_dir OUT   measure SAEs on held-out text: FVU, L0, dead latents, CE loss recovered
hf-sae features --sae DIR             collect feature statistics into DIR/features; `--explain TEXT` lists features
hf-sae explain --sae DIR              an LLM explains each feature; detection and fuzzing scores into DIR/features
hf-sae browse --sae DIR --output_dir OUT   write a static HTML feature browser
hf-sae app --sae DIR_OR_REPO          serve the interactive feature explorer (Gradio); `--write_space DIR` for a Space;
                                      `--graph DIR --transcoders DIR` for attribution graphs
hf-sae push --sae DIR --repo_id ID    upload SAEs, feature metadata and a model card in one commit
hf-sae pull --repo_id ID              download SAEs (only the hookpoints asked for) into the Hub cache or a folder
hf-sae convert SRC DST --to FORMAT    convert SAEs from any known format to saelens, sparsify or hf_sae, and
                                      transcoders to circuit_tracer
hf-sae attribute --prompt TEXT --transcoders DIR_OR_REPO   the attribution graph of one prompt, as circuit-tracer's
                                      graph JSON (for Neuronpedia's viewer), with its replacement and completeness

Every subcommand parses the same way: flags, or one YAML / JSON file first (its values become the defaults) with
flags after it overriding. `none` (or `null`) as a flag value, or `null` in the file, sets an optional field to None;
a `null` for a field that cannot be None means its default.
An error hf_sae raises on purpose is printed as one message with exit status 1; `--debug` (or HF_SAE_DEBUG=1) shows
its traceback instead. hf_sae logs what it does; other libraries' logs (HTTP requests among them) show at INFO only
with `--verbose`.
"""

import argparse
import contextlib
import dataclasses
import difflib
import functools
import io
import logging
import os
import subprocess
import sys
import typing
from collections.abc import Callable, Mapping

import yaml
from tqdm.std import tqdm
from transformers import HfArgumentParser

from . import arguments as A
from .app import build_app, load_explorer, load_graph_explorer
from .browser import write_browser
from .circuit_runners import run_attribute
from .clt_feature_runs import is_clt_folder
from .cpu_memory import keep_freed_memory
from .distribution import local_launch
from .errors import ArgumentError, HfSaeError
from .feature_store import LayerFeatures
from .hub import push_saes_to_hub
from .layout import EVAL_REPORT, METRICS, PER_SOURCE, QUALITY_KEYS
from .offline.corpus import prepare_corpus
from .runners import (
    explain_text,
    run_convert,
    run_evaluation,
    run_explain,
    run_features,
    run_pull,
    space_target,
    train_saes,
    write_activation_cache,
)
from .space import push_space, write_space
from .version import __version__

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DEBUG_VARIABLE = "HF_SAE_DEBUG"  # set (or pass --debug) to see the traceback of an hf_sae error
# `--help` renders at this width whatever the terminal, so that the texts the console script prints without importing
# hf_sae (hf_sae_cli.py, from hf_sae/cli_help/) are exactly the real parsers' help.
HELP_WIDTH = 100


def _fixed_width(formatter: type[argparse.HelpFormatter]) -> Callable[..., argparse.HelpFormatter]:
    return functools.partial(formatter, width=HELP_WIDTH)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each flag's help, except where the help says what its default is: there the
    sentinel (often None, resolved later) would contradict it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "Default:" in (action.help or "") else super()._get_help_string(action)


def parse_arguments(groups: tuple[type, ...], argv: list[str], prog: str) -> tuple:
    """The dataclasses of `groups`, from flags or from a YAML / JSON file followed by flags."""
    epilog = f"--debug (or {DEBUG_VARIABLE}=1) shows an error's traceback; --verbose shows other libraries' logs."
    parser = HfArgumentParser(groups, prog=prog, epilog=epilog, formatter_class=_fixed_width(_DefaultsHelpFormatter))
    sections = {section.title: section for section in parser._action_groups}
    for group in groups:  # each group's section in `--help` (titled by its `_argument_group_name`) says what it is for
        if section := sections.get(getattr(group, "_argument_group_name", None)):
            section.description = (group.__doc__ or "").strip().split("\n")[0]
    source = argv[0] if argv and argv[0].endswith(CONFIG_SUFFIXES) else None
    parser.error = _raise_argument_error(prog, source)  # one line and exit status 1, as every other hf_sae error
    optional = _optional_fields(groups)
    _accept_none(parser, optional)
    if source:
        values = {k: v for k, v in _read_config_file(argv[0]).items() if v is not None or k in optional}
        actions = {action.dest: action for action in parser._actions}
        if unknown := sorted(set(values) - set(actions)):
            raise ArgumentError(f"{argv[0]} sets {unknown}, which `{prog}` does not take. Check `{prog} --help`.")
        parser.set_defaults(**values)
        for name in values:
            actions[name].required = False
        argv = argv[1:]
    *groups_, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:  # each group checked its values as it was built; a typo'd flag must not pass unnoticed
        flags = [flag for action in parser._actions for flag in action.option_strings if "-" not in flag[2:]]
        hints = {flag: difflib.get_close_matches(flag, flags, 1, 0.6) for flag in unknown if flag.startswith("-")}
        hint = "".join(f" {flag}: did you mean {close[0]}?" for flag, close in hints.items() if close)
        raise ArgumentError(f"`{prog}` does not take {unknown}.{hint} `{prog} --help` lists every flag.")
    return tuple(groups_)


def _raise_argument_error(prog: str, source: str | None) -> Callable[[str], typing.NoReturn]:
    """argparse's `error`, raising instead of printing the usage and exiting with status 2."""

    def error(message: str) -> typing.NoReturn:
        where = f" (the values of {source} count as flags)" if source else ""
        raise ArgumentError(f"{message}{where}. `{prog} --help` lists every flag with its type and choices.")

    return error


def _read_config_file(path: str) -> dict:
    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
    except OSError as error:
        raise ArgumentError(f"Cannot read the argument file {path} ({error.strerror}). Check the path.") from None
    except yaml.YAMLError as error:
        raise ArgumentError(f"{path} is not valid YAML or JSON: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ArgumentError(f"{path} must hold a mapping of argument names to values; got {type(values).__name__}.")
    return values


def _optional_fields(groups: tuple[type, ...]) -> set[str]:
    """The fields that can be None."""
    return {
        f.name
        for group in groups
        for f in dataclasses.fields(group)
        if type(None) in typing.get_args(typing.get_type_hints(group)[f.name])
    }


def _accept_none(parser, optional: set[str]) -> None:
    """Let `none` / `null` set an optional field to None (argparse would try `int('None')`)."""
    for action in parser._actions:
        if action.dest in optional and callable(action.type):
            action.type = _none_or(action.type)


def _none_or(convert: Callable[[str], object]) -> Callable[[str], object]:
    def none_or(value: str):
        return None if value.lower() in ("none", "null") else convert(value)

    none_or.__name__ = getattr(convert, "__name__", "value")  # argparse names it: "invalid int value: 'abc'"
    return none_or


# ---- subcommands ----------------------------------------------------------------------------------------------------


def prepare_corpus_command(argv: list[str]) -> int:
    (args,) = parse_arguments((A.CorpusArguments,), argv, "hf-sae prepare-corpus")
    path = prepare_corpus(
        args.output_dir, test_fraction=args.test_fraction, seed=args.seed, force=args.force, sources=args.sources
    )
    print(f"Corpus ready at {path}")
    return 0


def train_command(argv: list[str]) -> int:
    groups = parse_arguments(A.TRAIN_GROUPS, argv, "hf-sae train")
    processes = groups[-1].num_processes
    if processes > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command again
        return subprocess.run([*local_launch(processes), "-m", "hf_sae.cli", "train", *argv]).returncode
    report = train_saes(*groups)
    if report:
        print(format_training_report(report, groups[-1].output_dir))
    return 0


def cache_command(argv: list[str]) -> int:
    groups = (A.LanguageModelArguments, A.DataArguments, A.CacheArguments)
    lm_args, data_args, args = parse_arguments(groups, argv, "hf-sae cache")
    path = write_activation_cache(lm_args, data_args, args)
    print(f"Activations of {', '.join(args.hookpoints)} cached in {path}; train with --activation_cache {path}")
    return 0


def eval_command(argv: list[str]) -> int:
    groups = (A.LanguageModelArguments, A.EvalDataArguments, A.EvaluationArguments)
    lm_args, data_args, args = parse_arguments(groups, argv, "hf-sae eval")
    report = run_evaluation(lm_args, data_args, args)
    print(format_report(report))
    print(f"Report in {args.output_dir}/{EVAL_REPORT}, firing-density plots beside it.")
    return 0


def features_command(argv: list[str]) -> int:
    groups = (A.LanguageModelArguments, A.DataArguments, A.FeatureArguments)
    lm_args, data_args, args = parse_arguments(groups, argv, "hf-sae features")
    if args.explain is not None and not is_clt_folder(args.sae):  # a CLT's run refuses --explain, naming why
        print(format_explanation(explain_text(lm_args, args)))
        return 0
    features = run_features(lm_args, data_args, args)
    tokens = features.metadata["tokens"]
    if isinstance(features, LayerFeatures):  # a cross-layer transcoder's: one table per layer
        counts = sorted({len(layer) for layer in features.values()})
        what = f"{'/'.join(map(str, counts))} features in each of {len(features)} layers"
    else:
        what = f"{len(features):,} features"
    print(f"Saved metadata of {what} over {tokens:,} tokens to {features.path}")
    return 0


def explain_command(argv: list[str]) -> int:
    (args,) = parse_arguments((A.ExplainArguments,), argv, "hf-sae explain")
    done, control = run_explain(args)
    print(format_explanation_scores(done, control))
    return 0


def browse_command(argv: list[str]) -> int:
    (args,) = parse_arguments((A.BrowseArguments,), argv, "hf-sae browse")
    print(f"Feature browser written to {write_browser(args.sae, args.output_dir, examples=args.examples)}")
    return 0


def app_command(argv: list[str]) -> int:
    lm_args, args = parse_arguments((A.LanguageModelArguments, A.AppArguments), argv, "hf-sae app")
    if args.write_space:
        base = lm_args.model_name_or_path
        folder = write_space(args.write_space, args.sae, hookpoint=args.hookpoint, base_model=base)
        print(f"Space written to {folder}; upload it with `hf upload --repo-type space SPACE_ID {folder}`")
        return 0
    graphs = None
    if args.graph or args.transcoders:
        graphs = load_graph_explorer(args.graph, args.transcoders, lm_args.model_name_or_path, device=args.device)
    explorer = load_explorer(args.sae, lm_args, hookpoint=args.hookpoint, device=args.device) if args.sae else None
    build_app(explorer, graphs=graphs).launch(server_name=args.host, server_port=args.port)
    return 0


def push_command(argv: list[str]) -> int:
    (args,) = parse_arguments((A.PushArguments,), argv, "hf-sae push")
    space = space_target(args) if args.space else None  # checked before anything is uploaded
    card = {"datasets": args.datasets, "license": args.license, "tags": args.tags}
    commit = push_saes_to_hub(args.repo_id, args.sae, private=args.private, token=args.token, revision=args.revision,
                              commit_message=args.commit_message, create_pr=args.create_pr, **card)  # fmt: skip
    print(f"Pushed to {commit.commit_url}")
    if space is not None:
        hookpoint, base_model = space
        info = push_space(args.space, args.repo_id, hookpoint=hookpoint, base_model=base_model, token=args.token,
                          private=args.private)  # fmt: skip
        print(f"Space pushed to {info.commit_url}")
    return 0


def pull_command(argv: list[str]) -> int:
    (args,) = parse_arguments((A.PullArguments,), argv, "hf-sae pull")
    for hookpoint, sae in run_pull(args).items():
        print(f"{hookpoint}: {sae.config.architecture}, {sae.config.num_latents:,} latents, at {sae.name_or_path}")
    return 0


def convert_command(argv: list[str]) -> int:
    # SRC and DST may come first, as positionals; the dataclass takes them as --src and --dst.
    positionals = []
    while argv and not argv[0].startswith("-") and len(positionals) < 2 and not argv[0].endswith(CONFIG_SUFFIXES):
        positionals.append(argv.pop(0))
    argv = [*(f for name, value in zip(("--src", "--dst"), positionals) for f in (name, value)), *argv]
    (args,) = parse_arguments((A.ConvertArguments,), argv, "hf-sae convert")
    for hookpoint, folder in run_convert(args).items():
        print(f"{hookpoint}: {args.to} {'folder' if args.to == 'circuit_tracer' else 'SAE'} written to {folder}")
    return 0


def attribute_command(argv: list[str]) -> int:
    (args,) = parse_arguments((A.AttributeArguments,), argv, "hf-sae attribute")
    run = run_attribute(args)
    data = run.graph_json
    tokens, nodes, links = len(data["metadata"]["prompt_tokens"]), len(data["nodes"]), len(data["links"])
    print(f"Graph of {tokens} tokens, {nodes:,} nodes and {links:,} links, written to {run.path}")
    print(f"Replacement score {run.replacement_score:.3f}, completeness score {run.completeness_score:.3f}")
    print(f"Graph page written to {run.page}")
    return 0


# ---- terminal formatting --------------------------------------------------------------------------------------------


def format_training_report(report: dict, output_dir: str) -> str:
    """What was trained and how good it is, as a small table whose columns fit the longest name."""
    header = ["hookpoint", "arch", "latents", "tokens", "FVU", "L0", "dead %"]
    rows = [
        [name, m["architecture"], f"{m['num_latents']:,}", f"{m['train_tokens']:,}",
         f"{m['fvu']:.3f}" if "fvu" in m else "-", f"{m['l0']:.1f}" if "l0" in m else "-",
         f"{100 * m.get('dead_fraction', m['train_dead_fraction']):.1f}"]
        for name, m in report.items()
    ]  # fmt: skip
    legend = (
        "FVU, L0 and dead % (latents that never fired) on held-out text; metrics.json also has the "
        "training-time dead fraction (silent for the last `dead_after_tokens`)."
    )
    lines = [f"\nSaved to {output_dir} (metrics in {output_dir}/{METRICS})", *format_table(header, rows, 2), legend]
    return "\n".join(lines + _per_source_lines(report))


def format_table(header: list[str], rows: list[list[str]], left_columns: int = 1) -> list[str]:
    """Lines of a table whose every column is as wide as its widest cell, columns two spaces apart: no name is cut
    and every row keeps the header's column positions. The first `left_columns` (names) align left, numbers right."""
    widths = [max(map(len, column)) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        aligned = (
            cell.ljust(w) if i < left_columns else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))
        )
        return "  ".join(aligned).rstrip()

    return [line(header), *map(line, rows)]


def _per_source_lines(report: Mapping[str, Mapping]) -> list[str]:
    """FVU, L0 (and loss recovered, from eval) of each SAE on each source of the held-out text, when it has them."""
    lines = []
    for name, metrics in report.items():
        for source, m in (metrics.get(PER_SOURCE) or {}).items():
            cells = [f"{key} {_cell(m[key])}" for key in ("fvu", "l0", "loss_recovered") if key in m]
            lines.append(f"  {name} on {source}: " + ", ".join(cells + [f"{m.get('eval_tokens', 0):,} tokens"]))
    return ["Per source:", *lines] if lines else []


def format_report(report: Mapping[str, Mapping]) -> str:
    """An evaluation report as a text table, one column per SAE."""
    keys = [
        key
        for key in (*QUALITY_KEYS, "eval_tokens", "eval_predictions", "outlier_tokens")
        if any(key in m for m in report.values())
    ]
    rows = [[key, *(_cell(m.get(key)) for m in report.values())] for key in keys]
    return "\n".join(format_table(["", *report], rows) + _per_source_lines(report))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3e}"


def format_explanation(rows: list[dict]) -> str:
    """`browser.explain`'s rows as a terminal table: one line per (token, feature)."""
    lines = [f"{'pos':>4}  {'token':<16}{'feature':>8}{'act':>9}  label"]
    for row in rows:
        token = repr(row["token"])[:16]
        for j, f in enumerate(row["features"] or [{"feature": "-", "activation": 0.0, "label": ""}]):
            head = f"{row['position']:>4}  {token:<16}" if j == 0 else " " * 22
            lines.append(f"{head}{f['feature']:>8}{f['activation']:>9.2f}  {f['label'][:60]}")
    return "\n".join(lines)


def format_explanation_scores(done: Mapping[int, Mapping], control: Mapping | None) -> str:
    """What `hf-sae explain` did this run: counts, mean scores, and the shuffled control's."""
    ok = [e for e in done.values() if e.get("status") == "ok"]
    unusable = sum(e.get("status") == "unusable" for e in done.values())
    silent = len(done) - len(ok) - unusable
    lines = [f"Explained {len(ok)} features ({unusable} unusable answers, {silent} without contexts)."]
    for key in ("detection", "detection_auroc", "fuzzing", "fuzzing_auroc"):
        values = [e[key] for e in ok if e.get(key) is not None]
        if values:
            lines.append(f"  mean {key}: {sum(values) / len(values):.3f} over {len(values)} features")
    for key in ("detection", "detection_auroc") if control else ():
        lines.append(
            f"  shuffled control, mean {key}: {_cell(control[f'shuffled_{key}'])} (real {_cell(control[key])})"
        )
    return "\n".join(lines)


def _end_progress_bars() -> None:
    """Close the progress bars an error stopped: each ends its line, so that the message starts on its own."""
    for bar in list(tqdm._instances):
        bar.close()


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "prepare-corpus": (prepare_corpus_command, "download the built-in offline corpus"),
    "train": (train_command, "train SAEs on a language model's activations"),
    "cache": (cache_command, "harvest activations once to disk, to train many SAEs or epochs from"),
    "eval": (eval_command, "measure SAEs: reconstruction, sparsity, LM loss recovered"),
    "features": (features_command, "collect per-feature statistics and top contexts; explain a text"),
    "explain": (explain_command, "explain features with an LLM, scored by detection and fuzzing"),
    "browse": (browse_command, "write a static HTML feature browser"),
    "app": (app_command, "serve the interactive feature explorer with a steering playground"),
    "push": (push_command, "upload SAEs with feature metadata and a model card to the Hub"),
    "pull": (pull_command, "download SAEs from the Hub"),
    "convert": (convert_command, "convert SAEs between hf_sae, SAELens, sparsify and other formats"),
    "attribute": (attribute_command, "trace one prompt through transcoders: an attribution graph as JSON"),
}


def _command_parser() -> argparse.ArgumentParser:
    """`hf-sae [--version] COMMAND`: the parser of the first argument."""
    parser = argparse.ArgumentParser(
        prog="hf-sae",
        description="Sparse autoencoders for Hugging Face models.",
        epilog="\n".join(f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items()),
        formatter_class=_fixed_width(argparse.RawDescriptionHelpFormatter),
        usage="hf-sae [--version] COMMAND [ARGS ...]",
    )
    parser.add_argument("--version", action="version", version=f"hf-sae {__version__}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def help_text(command: str | None) -> str:
    """What `hf-sae COMMAND --help` prints (`hf-sae --help` for None), from the parser the command itself builds."""
    if command is None:
        return _command_parser().format_help()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        COMMANDS[command][0](["--help"])
    return printed.getvalue()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _command_parser()
    known, rest = parser.parse_known_args(argv[:1])
    if known.command is None:
        parser.print_help()
        return 0
    args = argv[1:] + rest
    debug = "--debug" in args or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    # hf_sae says what it does; HTTP clients and other libraries speak at INFO only when asked (--verbose).
    level = logging.INFO if "--verbose" in args else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__package__).setLevel(logging.INFO)
    keep_freed_memory()
    try:
        return COMMANDS[known.command][0]([arg for arg in args if arg not in ("--debug", "--verbose")])
    except HfSaeError as error:
        _end_progress_bars()
        if debug:
            raise
        print(f"hf-sae {known.command}: error: {error}", file=sys.stderr)
        print(f"(--debug or {DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
