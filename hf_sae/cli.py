"""The `hf-sae` command line: thin subcommands that parse arguments and call the library.

hf-sae prepare-corpus                 download the built-in offline corpus (once)
hf-sae train [--flag value ...]       train SAEs; also `hf-sae train config.yaml`
hf-sae eval --sae PATH --output_dir OUT   measure SAEs on held-out text: FVU, L0, dead latents, CE loss recovered
hf-sae features --sae DIR             collect feature statistics into DIR/features; `--explain TEXT` lists features
hf-sae browse --sae DIR --output_dir OUT   write a static HTML feature browser
hf-sae push --sae DIR --repo_id ID    upload SAEs, feature metadata and a model card in one commit
hf-sae pull --repo_id ID              download SAEs (only the hookpoints asked for) into the Hub cache or a folder
"""

import argparse
import logging
import sys
from collections.abc import Callable

from . import __version__


def prepare_corpus_command(argv: list[str]) -> int:
    from .corpus import SOURCES, prepare_corpus

    parser = argparse.ArgumentParser(prog="hf-sae prepare-corpus", description="Download the built-in corpus.")
    parser.add_argument("--output_dir", default=None, help="Where to save it (default: the hf_sae cache).")
    parser.add_argument("--test_fraction", type=float, default=0.05, help="Share of each source held out as test.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the train/test split.")
    parser.add_argument("--force", action="store_true", help="Rebuild even if the corpus is already there.")
    parser.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=None, help="Default: all.")
    args = parser.parse_args(argv)
    path = prepare_corpus(
        args.output_dir, test_fraction=args.test_fraction, seed=args.seed, force=args.force, sources=args.sources
    )
    print(f"Corpus ready at {path}")
    return 0


def parse_with_files(dataclass_types: tuple, argv: list[str], prog: str):
    """Parse flat argument dataclasses from flags, or from one YAML / JSON file (flags after it override it)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, prog=prog)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        import yaml

        with open(argv[0]) as handle:
            values = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
        flags = [item for key, value in values.items() for item in _as_flags(key, value)]
        argv = flags + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def _as_flags(key: str, value) -> list[str]:
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    return [f"--{key}", str(value)]


def train_command(argv: list[str]) -> int:
    from .data import DataArguments
    from .pipeline import train_saes
    from .training import SaeTrainingArguments

    data_args, train_args = parse_with_files((DataArguments, SaeTrainingArguments), argv, "hf-sae train")
    report = train_saes(data_args, train_args)
    if report:
        print_report(report, train_args.output_dir)
    return 0


def print_report(report: dict, output_dir: str) -> None:
    """What was trained and how good it is, as a small table."""
    print(f"\nSaved to {output_dir} (metrics in {output_dir}/metrics.json)")
    print(f"{'hookpoint':<28}{'arch':<11}{'latents':>9}{'tokens':>12}{'FVU':>8}{'L0':>8}{'dead %':>8}")
    for name, metrics in report.items():
        fvu = f"{metrics['fvu']:.3f}" if "fvu" in metrics else "-"
        l0 = f"{metrics['l0']:.1f}" if "l0" in metrics else "-"
        print(
            f"{name:<28}{metrics['architecture']:<11}{metrics['num_latents']:>9,}{metrics['train_tokens']:>12,}"
            f"{fvu:>8}{l0:>8}{100 * metrics.get('dead_fraction', metrics['train_dead_fraction']):>8.1f}"
        )
    print(
        "FVU, L0 and dead % (latents that never fired) on held-out text; metrics.json also has the training-time"
        " dead fraction (silent for the last `dead_after_tokens`)."
    )


def eval_command(argv: list[str]) -> int:
    from .evaluation import REPORT_NAME, EvalDataArguments, EvaluationArguments, format_report, run_evaluation

    data_args, args = parse_with_files((EvalDataArguments, EvaluationArguments), argv, "hf-sae eval")
    report = run_evaluation(args, data_args)
    print(format_report(report))
    print(f"Report in {args.output_dir}/{REPORT_NAME}, firing-density plots beside it.")
    return 0


def features_command(argv: list[str]) -> int:
    from .browser import explain, format_explanation
    from .data import DataArguments
    from .features import FeatureArguments, load_sae_and_model, run_features

    data_args, args = parse_with_files((DataArguments, FeatureArguments), argv, "hf-sae features")
    if args.explain is not None:
        sae, model, tokenizer = load_sae_and_model(args.sae, args.model_name_or_path)
        print(format_explanation(explain(model, tokenizer, sae, args.explain, args.top, hookpoint=args.hookpoint)))
        return 0
    features = run_features(data_args, args)
    tokens = features.metadata["tokens"]
    print(f"Saved metadata of {len(features):,} features over {tokens:,} tokens to {features.path}")
    return 0


def browse_command(argv: list[str]) -> int:
    from .browser import write_browser

    parser = argparse.ArgumentParser(prog="hf-sae browse", description="Write a static HTML feature browser.")
    parser.add_argument("--sae", required=True, help="The SAE's folder, with features/ (from `hf-sae features`).")
    parser.add_argument("--output_dir", required=True, help="Where to write index.html (opens from file://).")
    parser.add_argument("--examples", type=int, default=10, help="Top contexts shown per feature.")
    args = parser.parse_args(argv)
    path = write_browser(args.sae, args.output_dir, examples=args.examples)
    print(f"Feature browser written to {path}")
    return 0


def push_command(argv: list[str]) -> int:
    from .hub import push_saes_to_hub

    parser = argparse.ArgumentParser(prog="hf-sae push", description="Upload SAEs to the Hub in one commit.")
    parser.add_argument("--sae", required=True, help="An SAE folder, or a training output with hookpoint folders.")
    parser.add_argument("--repo_id", required=True, help="The Hub repo, e.g. `you/smollm2-saes`; created if needed.")
    parser.add_argument("--private", action="store_true", help="Create the repo private.")
    parser.add_argument("--revision", default=None, help="The branch to commit to (default: main).")
    parser.add_argument("--token", default=None, help="A write token (default: the logged-in one, or HF_TOKEN).")
    parser.add_argument("--commit_message", default=None)
    args = parser.parse_args(argv)
    commit = push_saes_to_hub(args.repo_id, args.sae, private=args.private, token=args.token,
                              revision=args.revision, commit_message=args.commit_message)  # fmt: skip
    print(f"Pushed to {commit.commit_url}")
    return 0


def pull_command(argv: list[str]) -> int:
    from .hub import load_saes

    parser = argparse.ArgumentParser(prog="hf-sae pull", description="Download SAEs from the Hub.")
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--hookpoints", nargs="+", default=None, help="Only these (default: all).")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--token", default=None)
    parser.add_argument("--output_dir", default=None, help="Also save them here (default: the Hub cache only).")
    args = parser.parse_args(argv)
    saes = load_saes(args.repo_id, args.hookpoints, revision=args.revision, token=args.token)
    if args.output_dir:
        from .hub import save_saes

        save_saes(saes, args.output_dir)
    for hookpoint, sae in saes.items():
        print(f"{hookpoint}: {sae.config.architecture}, {sae.config.num_latents:,} latents, at {sae.name_or_path}")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "prepare-corpus": (prepare_corpus_command, "download the built-in offline corpus"),
    "train": (train_command, "train SAEs on a language model's activations"),
    "eval": (eval_command, "measure SAEs: reconstruction, sparsity, LM loss recovered"),
    "features": (features_command, "collect per-feature statistics and top contexts; explain a text"),
    "browse": (browse_command, "write a static HTML feature browser"),
    "push": (push_command, "upload SAEs with feature metadata and a model card to the Hub"),
    "pull": (pull_command, "download SAEs from the Hub"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="hf-sae",
        description="Sparse autoencoders for Hugging Face models.",
        epilog="\n".join(f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="hf-sae [--version] COMMAND [ARGS ...]",
    )
    parser.add_argument("--version", action="version", version=f"hf-sae {__version__}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    known, rest = parser.parse_known_args(argv[:1])
    if known.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[known.command][0](argv[1:] + rest)


if __name__ == "__main__":
    sys.exit(main())
