"""What epochs over a cache buy: held-out FVU of SAEs trained for several epochs of a small cache against one pass
over a larger one, all on the same held-out tokens.

    hf-sae cache --output_dir cache/big --cache_tokens 300000
    python scripts/replay_epochs.py --cache cache/big --small_tokens 60000 --epochs 1 2 5 --output_dir out/epochs

The small cache is the first `--small_tokens` rows of the big one, so the single pass sees them and more besides.
Every SAE has the same initial weights; each run uses `hf-sae train`'s defaults otherwise. The held-out text is
the built-in corpus's test split, through one LM forward for all the SAEs.
"""

import argparse
import json
from pathlib import Path

import torch

from hf_sae.activation_cache import ActivationCache, write_cache
from hf_sae.arguments import TRAIN_GROUPS, DataArguments, LanguageModelArguments, group_arguments
from hf_sae.data import load_token_blocks, read_blocks
from hf_sae.evaluation import evaluate_saes
from hf_sae.hub import load_saes
from hf_sae.models import load_model
from hf_sae.runners import train_saes


def prefix_records(cache: ActivationCache, tokens: int, step: int = 8192):
    """The first `tokens` rows of `cache` with their provenance, as `write_cache` takes them."""
    provenance = cache.table.slice(0, tokens).select([c for c in cache.table.column_names if c not in cache.widths])
    for start in range(0, tokens, step):
        rows = torch.arange(start, min(start + step, tokens))
        part = provenance.slice(start, len(rows))
        yield ({h: cache.gather(h, rows) for h in cache.widths},
               {name: part.column(name).to_numpy() for name in part.column_names})  # fmt: skip


def write_prefix_cache(cache: ActivationCache, tokens: int, folder: Path) -> None:
    """The first `tokens` rows of `cache` as a cache of their own at `folder`, with its model, LM and text."""
    metadata = {key: value for key, value in cache.meta.items() if key in ("model", "lm", "data")}
    write_cache(prefix_records(cache, tokens), folder, max_tokens=tokens, dtype=cache.meta["dtype"], metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--small_tokens", type=int, required=True)
    parser.add_argument("--epochs", type=float, nargs="+", default=[1, 2, 5])
    parser.add_argument("--eval_tokens", type=int, default=50_000)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--hookpoint", default="model.layers.15")
    parser.add_argument("--batch_size", type=int, default=4096, help="Tokens per optimiser step.")
    args = parser.parse_args()

    out, big = Path(args.output_dir), ActivationCache(args.cache)
    small = out / "small_cache"
    if not small.exists():
        write_prefix_cache(big, args.small_tokens, small)
    runs = {f"{epochs:g} epoch(s) of {args.small_tokens:,}": (small, epochs) for epochs in args.epochs}
    runs[f"1 pass over {big.tokens:,}"] = (Path(args.cache), 1)
    trained = {}
    for index, (label, (cache, epochs)) in enumerate(runs.items()):
        folder = out / f"run{index}"
        if not (folder / "metrics.json").exists():
            groups = group_arguments(TRAIN_GROUPS, hookpoints=[args.hookpoint], activation_cache=str(cache),
                                     model_name_or_path=big.meta["lm"]["model_name_or_path"],
                                     epochs=epochs, output_dir=str(folder), overwrite_output_dir=True, eval_tokens=0,
                                     report_to="none", save_steps=0, batch_size=args.batch_size)  # fmt: skip
            train_saes(*groups)
        report = json.loads((folder / "metrics.json").read_text())[args.hookpoint]
        trained[label] = (load_saes(str(folder))[args.hookpoint], report)

    lm_args = LanguageModelArguments(model_name_or_path=big.meta["lm"]["model_name_or_path"])
    model, tokenizer = load_model(lm_args.model_name_or_path)
    reading = lm_args.reading(model.device)
    blocks = load_token_blocks(DataArguments(dataset_split="test"), tokenizer)
    input_ids, _ = read_blocks(blocks, args.eval_tokens)
    metrics = evaluate_saes(model, {label: sae for label, (sae, _) in trained.items()}, input_ids,
                            exclude_token_ids=tokenizer.all_special_ids, max_tokens=args.eval_tokens, lm_metrics=False,
                            batch_size=reading.batch_size, **reading.keywords)  # fmt: skip
    rows = {label: {"train_tokens": report["train_tokens"], "train_seconds": report["train_seconds"],
                    "fvu": metrics[label]["fvu"], "l0": metrics[label]["l0"],
                    "dead_fraction": metrics[label]["dead_fraction"], "eval_tokens": metrics[label]["eval_tokens"]}
            for label, (_, report) in trained.items()}  # fmt: skip
    (out / "epochs.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'run':<28}{'train tokens':>14}{'seconds':>9}{'FVU':>8}{'L0':>7}{'dead %':>8}")
    for label, row in rows.items():
        print(f"{label:<28}{row['train_tokens']:>14,}{row['train_seconds']:>9.0f}{row['fvu']:>8.4f}{row['l0']:>7.1f}"
              f"{100 * row['dead_fraction']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
