"""What the default run should spend its budget on: held-out FVU, L0, dead and dense shares, and the share of
features with a clear pattern (`hf_sae.interpretability`), of the default TopK SAE trained several ways at about the
same cost, each way with several seeds, every other setting `hf-sae train`'s.

    hf-sae cache --output_dir cache/1m --cache_tokens 1000000
    python scripts/measure_default_run.py --cache cache/1m --output_dir out/default-run

The LM forward costs a token 1/h seconds and an SAE step 1/r (on 2 CPU cores, idle, with AVX-512 bf16: h about
2,000-3,000 tok/s and r about 13,000-17,500 in a training command; about 900 and 8,000 without). F fresh tokens cost
F (1/h + 1/r); a cache of N tokens replayed for E epochs costs N/h + E N/r. With r/h about 7-9, one fresh pass over
1M tokens costs about as much as six epochs over 700,000 cached tokens, ten over 500,000 or two over 900,000 (the
strategies below, each at more than one learning rate; `6x1m-lr2e-3` is a longer run). One epoch of a
cache trains on the tokens a fresh run of that many tokens reads (bf16 on disk, in one random order instead of
through the shuffle buffer), so it stands for the fresh run without paying for the LM forward again; a smaller cache
is the first N tokens of the big one (`replay_epochs.write_prefix_cache`).

Each run's folder is `<output_dir>/<strategy>-seed<s>`; one that already holds metrics.json is read, not trained
again (and one with features.json is not described again), so an interrupted measurement goes on where it stopped.
Every SAE is then measured on the same held-out tokens in one LM forward, by the report `hf-sae train` ends with
(`--eval_tokens 0`: train only), and described on the same held-out text as `hf-sae features` does (without logit
effects or neighbours, which the score does not read). The table (`runs.json`, and Markdown on stdout) has each
run's command, tokens, the wall time of its training command (LM load and replay; the harvest is on top) and
held-out metrics.
"""

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from replay_epochs import write_prefix_cache

from hf_sae.activation_cache import ActivationCache
from hf_sae.activations import batched
from hf_sae.arguments import DataArguments, LanguageModelArguments
from hf_sae.data import iter_blocks, load_token_blocks
from hf_sae.evaluation import HELD_OUT_SPLIT, held_out_report, load_held_out
from hf_sae.features import collect_feature_metadata
from hf_sae.hub import load_saes
from hf_sae.models import load_model, max_positions

HOOKPOINT = "model.layers.15"
# name: (tokens of the cache it replays, none: the whole; the flags beyond the cache and seed). A run given a cache
# trains at lr 1e-3 unless it says otherwise.
STRATEGIES = {
    "fresh": (None, ["--epochs", "1"]),
    "fresh-lr2e-3": (None, ["--epochs", "1", "--learning_rate", "2e-3"]),
    "fresh-lr3e-3": (None, ["--epochs", "1", "--learning_rate", "3e-3"]),
    "2x900k": (900_000, ["--epochs", "2"]),
    "2x900k-lr2e-3": (900_000, ["--epochs", "2", "--learning_rate", "2e-3"]),
    "6x700k": (700_000, ["--epochs", "6"]),
    "6x700k-lr2e-3": (700_000, ["--epochs", "6", "--learning_rate", "2e-3"]),
    "6x700k-lr3e-3": (700_000, ["--epochs", "6", "--learning_rate", "3e-3"]),
    "10x500k": (500_000, ["--epochs", "10"]),
    "10x500k-lr2e-3": (500_000, ["--epochs", "10", "--learning_rate", "2e-3"]),
    "6x1m-lr2e-3": (None, ["--epochs", "6", "--learning_rate", "2e-3"]),  # a longer run: about 1.5 times the cost
}
TRAINED = ("train_tokens", "train_epochs", "train_seconds", "train_dead_fraction")
HELD_OUT = ("fvu", "l0", "dead_fraction", "dense_fraction", "eval_tokens")
FEATURES = ("clear_pattern_share", "scored_features", "dense_latents")


def train(cache: str, folder: Path, flags: list[str], seed: int) -> str:
    """Train one run unless its folder already has one; its command as a user would type it."""
    command = ["hf-sae", "train", "--activation_cache", cache, *flags, "--seed", str(seed), "--eval_tokens", "0",
               "--output_dir", str(folder), "--report_to", "none", "--save_steps", "0"]  # fmt: skip
    if not (folder / "metrics.json").exists():
        start = time.perf_counter()
        executable = str(Path(sys.executable).parent / "hf-sae")
        subprocess.run([executable, *command[1:], "--overwrite_output_dir"], check=True)
        (folder / "wall_seconds.json").write_text(json.dumps(round(time.perf_counter() - start, 1)) + "\n")
    return shlex.join(command)


def prefix_cache(cache: Path, tokens: int, folder: Path) -> Path:
    """The first `tokens` tokens of `cache` as a cache of their own (written once)."""
    if not folder.exists():
        write_prefix_cache(ActivationCache(cache), tokens, folder)
    return folder


def held_out_metrics(folders: dict[str, Path], eval_tokens: int, feature_tokens: int) -> dict[str, dict]:
    """Every run's SAE on the same held-out tokens, through one LM forward, as `hf-sae train` reports it, with the
    interpretability summary of its features on `feature_tokens` held-out tokens, as `hf-sae features` computes it."""
    lm_args, data_args = LanguageModelArguments(), DataArguments()
    model, tokenizer = load_model(lm_args.model_name_or_path)
    reading = lm_args.reading(model.device)
    saes = {name: load_saes(str(folder))[HOOKPOINT] for name, folder in folders.items()}
    held_out = load_held_out(tokenizer, data_args, eval_tokens)
    report, _ = held_out_report(model, tokenizer, saes, reading, data_args, held_out)
    text = dataclasses.replace(data_args, dataset_split=HELD_OUT_SPLIT)
    blocks = load_token_blocks(text, tokenizer, max_positions=max_positions(model))
    for name, folder in folders.items():
        described = folder / "features.json"
        if not described.exists():
            batches = batched(iter_blocks(blocks), reading.batch_size)
            features = collect_feature_metadata(model, tokenizer, saes[name], batches, max_tokens=feature_tokens,
                                                num_logits=0, num_neighbours=0, **reading.keywords)  # fmt: skip
            summary = features.metadata["interpretability"]
            described.write_text(json.dumps({**summary, "tokens": features.metadata["tokens"]}, indent=2) + "\n")
        report[name].update({key: json.loads(described.read_text())[key] for key in FEATURES})
    return report


def markdown(rows: dict[str, dict]) -> str:
    """The table as the documentation shows it: one line per run."""
    lines = ["| run | tokens | epochs | wall s | FVU | L0 | dead % | dense % | clear pattern % | dense latents |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        dead, dense, clear = (100 * row[key] for key in ("dead_fraction", "dense_fraction", "clear_pattern_share"))
        lines.append(f"| {name} | {row['train_tokens']:,} | {row['train_epochs']:g} | {row['wall_seconds']} | "
                     f"{row['fvu']:.3f} | {row['l0']:.1f} | {dead:.2f} | {dense:.2f} | {clear:.1f} | "
                     f"{row['dense_latents']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="An `hf-sae cache` folder of the default text.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--eval_tokens", type=int, default=100_000, help="Held-out tokens, the same for every run.")
    parser.add_argument("--feature_tokens", type=int, default=100_000, help="Held-out tokens for features.")
    args = parser.parse_args()

    out, commands, folders = Path(args.output_dir), {}, {}
    out.mkdir(parents=True, exist_ok=True)
    for name in args.strategies:
        tokens, flags = STRATEGIES[name]
        cache = Path(args.cache) if tokens is None else prefix_cache(Path(args.cache), tokens, out / f"cache-{tokens}")
        for seed in args.seeds:
            run, folders[run] = f"{name}-seed{seed}", out / f"{name}-seed{seed}"
            commands[run] = train(str(cache), folders[run], flags, seed)
    if not args.eval_tokens:
        return
    held_out = held_out_metrics(folders, args.eval_tokens, args.feature_tokens)
    rows = {}
    for run, folder in folders.items():
        trained = json.loads((folder / "metrics.json").read_text())[HOOKPOINT]
        wall = folder / "wall_seconds.json"
        per_source = {source: metrics["fvu"] for source, metrics in held_out[run].get("per_source", {}).items()}
        rows[run] = {"command": commands[run], "wall_seconds": json.loads(wall.read_text()) if wall.exists() else None,
                     **{key: trained.get(key) for key in TRAINED},
                     **{key: held_out[run][key] for key in (*HELD_OUT, *FEATURES)},
                     "per_source_fvu": per_source}  # fmt: skip
    (out / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
