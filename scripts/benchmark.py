"""Speed and memory of hf_sae, measured against this machine's own matmul roofline in the same run.

    python scripts/benchmark.py                       # everything, on the default SmolLM2 layer-15 setup
    python scripts/benchmark.py --sections sae        # the SAE training step alone (no model or corpus needed)
    python scripts/benchmark.py --device cuda --json results.json
    HF_SAE_KEEP_FREED_MEMORY=0 python scripts/benchmark.py   # glibc's malloc defaults, which hf-sae changes

Sections:
  roofline  dense (batch, d_in) @ (d_in, num_latents) matmul throughput in fp32 and bf16: the SAE encoder's shape, by
            the faster of torch's default matmul and oneDNN's (`hf_sae.fast_linear`, which the step uses on CPUs)
  harvest   LM tokens/s: full forward vs forward stopped after the hookpoint, fp32 and bf16 autocast
  sae       the trainer's own step (`SaeTrainer.step`) on stored activations, per architecture and precision,
            with peak memory and L0; each step is reported as a fraction of the roofline, its ideal cost being one
            dense encoder matmul (2 * d_in * num_latents FLOPs per token), and of the TopK step. The penalty
            architectures (relu, jumprelu, gated) have their encoder bias or thresholds set so that their L0 is
            about k, as after training, since their step's cost follows their L0; `topk_transcoder` and
            `topk_skip_transcoder` are the TopK step predicting a second activation of the same width (the skip term
            adds a d_in x d_in matmul)
  forward   the stopped forward (`run_lm` at the run's lm_dtype) under each setting worth trying, each against the
            forward's FLOP roofline: as loaded (SDPA attention for most models, fp32 linear layers on oneDNN on CPUs),
            the linear layers on torch's default kernel, eager attention,
            each decoder layer `torch.compile`d, one thread, and the same tokens in other batch and context shapes
            (not in the default sections)
  e2e       the whole training loop (harvest + shuffle + SAE step) tokens/s, and its ratio to harvesting alone
  replay    activation cache: write and replay tokens/s (random access, 16-bit, memory-mapped) against the SAE step
            alone, and the trainer's tokens/s from the cache with 1 and `--sweep_saes` SAEs: the marginal cost of
            each extra SAE in a sweep, against one SAE (and against a live run, when the harvest section ran)
  processes the whole loop with 1 and `--processes N` processes (torchrun, one thread each), and the scaling
            efficiency: N-process tokens/s over N times the 1-process tokens/s (not in the default sections)
  shards    the whole loop with the SAE whole in 1 process and split over `--processes N` feature shards
            (`--shard_features N`), and the bytes each collective moves per step (not in the default sections)
  attribution, clt   attribution graphs per prompt length, and the cross-layer transcoder's training step
            (scripts/benchmark_circuits.py; not in the default sections)

    python scripts/benchmark.py --sections processes --processes 2
    python scripts/benchmark.py --device cuda         # a GPU machine: the same sections, in a few minutes
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from benchmark_circuits import add_arguments as add_circuit_arguments
from benchmark_circuits import run_sections as circuit_sections

from hf_sae.architectures import ARCHITECTURES as SAE_ARCHITECTURES
from hf_sae.arguments import LanguageModelArguments
from hf_sae.cpu_memory import keep_freed_memory
from hf_sae.distribution import local_launch
from hf_sae.precision import default_device

# The TopK step as a transcoder (with a skip term or not), predicting another activation of the same width.
TRANSCODERS = {"topk_transcoder": ("topk", False), "topk_skip_transcoder": ("topk", True)}
ARCHITECTURES = (*SAE_ARCHITECTURES, *TRANSCODERS)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def best_matmul(rows: int, inner: int, outer: int, device: str, dtype: torch.dtype, repeats: int) -> tuple[float, str]:
    """(GFLOP/s, kernel) of the faster of the kernels hf_sae can use for a (rows, inner) @ (inner, outer) product:
    torch's default matmul, and oneDNN's (`hf_sae.fast_linear`) where it serves (CPUs, fp32). The roofline is
    what this machine reaches by the best of them, so a faster kernel in a step cannot pass for less overhead."""
    from hf_sae.fast_linear import linear, uses_onednn

    a = torch.randn(rows, inner, device=device, dtype=dtype)
    weight = torch.randn(outer, inner, device=device, dtype=dtype)
    kernels = {"matmul": lambda: a @ weight.T}
    if uses_onednn(a, weight):
        kernels["oneDNN"] = lambda: linear(a, weight)
    rates = {name: 2 * rows * inner * outer / best_seconds(fn, repeats) / 1e9 for name, fn in kernels.items()}
    kernel = max(rates, key=rates.get)
    return rates[kernel], kernel


def encoder_matmul(args, precision: str) -> tuple[float, str]:
    """The encoder's matmul, (batch, d_in) @ (d_in, num_latents): the roofline of the SAE step."""
    return best_matmul(args.batch_size, args.d_in, args.num_latents, args.device, PRECISIONS[precision], args.repeats)


def roofline(args) -> dict:
    results = {}
    for name in args.precisions:
        results[f"matmul_{name}_gflops"], results[f"matmul_{name}_kernel"] = encoder_matmul(args, name)
    return results


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def lm_dtype(args) -> torch.dtype | None:
    """The LM forward's autocast dtype as a run of `hf-sae train` reads it here (its default `lm_dtype`)."""
    return LanguageModelArguments().reading(args.device).autocast_dtype


def autocast(device: str, dtype: torch.dtype | None):
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype else nullcontext()


def sae_step(args, architecture: str, precision: str) -> dict:
    """The trainer's own optimiser step (`SaeTrainer.step`: forward with its loss, backward, clipping, Adam, the
    schedule), on one stored batch. Run in a fresh process (`step_in_process`), so that its peak resident memory
    and its accelerate state (the mixed precision is set once per process) are its own."""
    from hf_sae import SaeConfig, SaeModel
    from hf_sae.arguments import SaeTrainingArguments
    from hf_sae.training import SaeTrainer

    torch.manual_seed(0)
    architecture, skip = TRANSCODERS.get(architecture, (architecture, None))
    transcoder = {"output_hookpoint": "out", "skip_connection": skip, "apply_b_dec_to_input": False}
    transcoder = {} if skip is None else transcoder
    n, k = args.num_latents, args.k if SAE_ARCHITECTURES[architecture].uses_k else None
    groups = {"matryoshka_group_sizes": [n // 8, n // 8, n // 4, n - n // 2]} if "matryoshka" in architecture else {}
    config = SaeConfig(d_in=args.d_in, num_latents=n, architecture=architecture, k=k, hookpoint="in", **groups,
                       **transcoder)  # fmt: skip
    sae = SaeModel(config).to(args.device).train()
    x = torch.randn(args.batch_size, args.d_in, device=args.device)
    batch = {"in": x, "out": torch.randn_like(x)} if transcoder else {"in": x}
    with tempfile.TemporaryDirectory() as out:  # no logging steps, no checkpoints: the step alone
        train = SaeTrainingArguments(train_tokens=args.batch_size * 1000, batch_size=args.batch_size, output_dir=out,
                                     learning_rate=1e-4, b_dec_init="zero", normalize_activations=False,
                                     mixed_precision="no" if precision == "fp32" else precision, logging_steps=10**9,
                                     report_to="none", save_steps=0)  # fmt: skip
        trainer = SaeTrainer(train, {"sae": sae}, buffer=None)
        trainer.prepare(batch)
    if k is None:
        with torch.no_grad():  # about k active latents per token, as a trained SAE of this sparsity has
            cut = sae.pre_activation(x).flatten()[: 2**24].quantile(1 - args.k / n)
            (sae.threshold.fill_(cut) if architecture == "jumprelu" else sae.b_enc.sub_(cut))
    with torch.no_grad():
        l0 = sae(x, batch.get("out"), return_latents=False).l0.item()
    seconds = best_seconds(lambda: trainer.step([batch]), args.repeats)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    # The roofline is measured again here, right after the step, so that both see the same machine load.
    gflops = encoder_matmul(args, precision)[0]
    return {
        "tokens_per_second": args.batch_size / seconds,
        "step_ms": 1000 * seconds,
        "l0": l0,
        "matmul_gflops": gflops,
        "fraction_of_roofline": args.batch_size / seconds / (gflops * 1e9 / (2 * args.d_in * args.num_latents)),
        "peak_gpu_memory_mb": None if peak is None else peak / 2**20,
        "peak_rss_mb": peak_rss_mb() if args.device == "cpu" else None,
    }


def step_in_process(args, architecture: str, precision: str) -> dict:
    """`sae_step` in a fresh process of this script; a CPU run there sees no GPU (accelerate would move the SAE)."""
    command = [sys.executable, __file__, "--_one_step", architecture, precision, *sys.argv[1:]]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})}
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)


def token_batches(args, tokenizer, count: int) -> list[torch.Tensor]:
    from hf_sae.arguments import DataArguments
    from hf_sae.data import iter_blocks, load_token_blocks

    blocks = load_token_blocks(DataArguments(context_size=args.context_size), tokenizer)
    iterator = iter_blocks(blocks)
    return [torch.stack([next(iterator) for _ in range(args.lm_batch_size)]) for _ in range(count)]


def forward_roofline(model, hookpoint: str, ids: torch.Tensor, dtype: torch.dtype | None) -> dict:
    """The stopped forward's FLOP roofline: 2 x the parameters of the modules that run up to the hookpoint per token
    (embedding lookups excluded: no multiply), at the matmul rate this machine reaches on the forward's largest
    linear layer (`tokens x in @ in x out`), measured now. Attention scores add a little on top (not counted)."""
    from hf_sae.hookpoints import capture_activations

    ran, handles = [], []
    for module in model.modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(lambda m, args, out: ran.append(m)))
    with torch.no_grad():
        capture_activations(model, [hookpoint], ids[:1, :8].to(model.device))
    for handle in handles:
        handle.remove()
    ran = list({id(m): m for m in ran}.values())
    params = sum(p.numel() for m in ran if not isinstance(m, torch.nn.Embedding) for p in m.parameters())
    widest = max((m for m in ran if isinstance(m, torch.nn.Linear)), key=lambda m: m.weight.numel())
    shape = (ids.numel(), widest.in_features, widest.out_features, model.device.type, dtype or torch.float32, 5)
    gflops, kernel = best_matmul(*shape)
    return {"forward_params": params, "forward_matmul_gflops": gflops, "forward_matmul_kernel": kernel,
            "forward_roofline_tokens_per_second": gflops * 1e9 / (2 * params)}  # fmt: skip


def harvest(args) -> dict:
    """Tokens/s of the LM forward, full and stopped, in fp32 and bf16; then the training pipeline's own harvest
    (stopped forward at the run's `lm_dtype`, counted tokens) against the forward's FLOP roofline, in the same run."""
    from hf_sae.activations import harvest as harvest_chunks
    from hf_sae.hookpoints import capture_activations
    from hf_sae.lm_forward import lm_kernels, special_token_ids
    from hf_sae.models import load_model

    model, tokenizer = load_model(args.model, device=args.device)
    batches = token_batches(args, tokenizer, 3)
    tokens = batches[0].numel()
    result = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for mode in ("full", "stopped"):

            def forward():
                for ids in batches:
                    with torch.no_grad(), lm_kernels(torch.device(args.device), dtype):  # as hf_sae runs the LM
                        if mode == "full":
                            model(input_ids=ids.to(args.device), use_cache=False)
                        else:
                            capture_activations(model, [args.hookpoint], ids.to(args.device))

            seconds = best_seconds(forward, max(args.repeats // 3, 2), warmup=1)
            result[f"harvest_{mode}_{precision}_tokens_per_second"] = len(batches) * tokens / seconds
    dtype, excluded = lm_dtype(args), special_token_ids(tokenizer)

    def pipeline():
        return list(harvest_chunks(model, [args.hookpoint], batches, exclude_token_ids=excluded, autocast_dtype=dtype))

    seconds = best_seconds(pipeline, max(args.repeats // 3, 2), warmup=1)
    result["harvest_lm_dtype"] = str(dtype or torch.float32).removeprefix("torch.")
    result["harvest_tokens_per_second"] = len(batches) * tokens / seconds  # LM tokens in, as the e2e counts none
    result.update(forward_roofline(model, args.hookpoint, batches[0], dtype))
    result["harvest_fraction_of_roofline"] = (
        result["harvest_tokens_per_second"] / result["forward_roofline_tokens_per_second"]
    )
    return result


def forward_settings(args) -> dict:
    """Stopped-forward tokens/s per setting, all on the same tokens and in the same run, so the settings compare."""
    from hf_sae.hookpoints import capture_activations
    from hf_sae.lm_forward import run_lm
    from hf_sae.models import load_model

    model, tokenizer = load_model(args.model, device=args.device)
    dtype = lm_dtype(args)
    tokens = torch.cat(token_batches(args, tokenizer, 3))  # (3 * lm_batch_size, context_size)
    repeats = max(args.repeats // 3, 2)

    def rate(batch_rows: int, context: int, warmup: int = 1, default_linears: bool = False) -> float:
        """The pipeline's forward (`run_lm`), or with `default_linears` the same under plain autocast, whose
        linear layers run on torch's default kernel instead of `fast_linear`'s."""
        batches = tokens.reshape(-1, context).split(batch_rows)

        def forward():
            for ids in batches:
                if default_linears:
                    with torch.no_grad(), autocast(args.device, dtype):
                        capture_activations(model, [args.hookpoint], ids.to(args.device))
                else:
                    run_lm(model, [args.hookpoint], ids.to(args.device), autocast_dtype=dtype)

        return tokens.numel() / best_seconds(forward, repeats, warmup=warmup)

    rows, context = tokens.shape
    settings = {f"as loaded, {args.lm_batch_size}x{context}": rate(args.lm_batch_size, context)}
    settings["F.linear kernel"] = rate(args.lm_batch_size, context, default_linears=True)
    loaded = model.config._attn_implementation
    model.set_attn_implementation("eager")
    settings["eager attention"] = rate(args.lm_batch_size, context)
    model.set_attn_implementation(loaded)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings["one thread"] = rate(args.lm_batch_size, context)
    torch.set_num_threads(threads)
    for batch_rows in sorted({max(args.lm_batch_size // 2, 1), 2 * args.lm_batch_size, rows} - {args.lm_batch_size}):
        settings[f"batch {batch_rows}x{context}"] = rate(batch_rows, context)
    for length in (context // 2, 2 * context):  # the same tokens per batch in shorter or longer blocks
        if tokens.numel() % length or args.lm_batch_size * context < length:
            continue  # the tokens do not fill whole blocks of this length
        batch_rows = args.lm_batch_size * context // length
        settings[f"batch {batch_rows}x{length}"] = rate(batch_rows, length)
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    result = {}
    try:
        for layer in layers:
            layer.compile()
        settings["compiled layers"] = rate(args.lm_batch_size, context, warmup=2, default_linears=True)
    except Exception as error:  # no compiler toolchain here: say so, measure the rest
        result["forward_compile_error"] = f"{type(error).__name__}: {str(error)[:200]}"
    for layer in layers:
        layer._compiled_call_impl = None  # what nn.Module.compile set: the rest of the section runs eagerly
    result.update(forward_roofline(model, args.hookpoint, tokens[: args.lm_batch_size], dtype))
    result["forward_lm_dtype"] = str(dtype or torch.float32).removeprefix("torch.")
    result["forward_settings_tokens_per_second"] = settings
    return result


def e2e_settings(args, out: str) -> dict:
    """The `hf-sae train` settings of the end-to-end runs: the loop alone, no held-out report, no checkpoints."""
    return {"model_name_or_path": args.model, "hookpoints": [args.hookpoint], "k": args.k,
            "num_latents": args.num_latents, "batch_size": args.batch_size, "train_tokens": args.e2e_tokens,
            "context_size": args.context_size, "lm_batch_size": args.lm_batch_size, "report_to": "none",
            "eval_tokens": 0, "save_steps": 0, "output_dir": out}  # fmt: skip


def end_to_end(args) -> dict:
    from hf_sae.arguments import TRAIN_GROUPS, group_arguments
    from hf_sae.runners import train_saes

    with tempfile.TemporaryDirectory() as out:
        report = train_saes(*group_arguments(TRAIN_GROUPS, **e2e_settings(args, out)))
    info = report[args.hookpoint]
    return {"e2e_tokens_per_second": info["train_tokens"] / info["train_seconds"]}


def replay(args) -> dict:
    """Cache write / replay tokens/s and the trainer's rate from a cache with 1 and `args.sweep_saes` SAEs. The cache
    holds random activations: writing and replaying them costs the same whatever the values."""
    import numpy as np

    from hf_sae.activation_cache import ActivationCache, CacheReplay, write_cache

    tokens, hookpoint = args.replay_tokens, args.hookpoint
    acts = torch.randn(tokens, args.d_in)
    lm_batch = args.lm_batch_size * args.context_size  # the writer gets one LM batch at a time, as from the LM
    records = [({hookpoint: acts[i : i + lm_batch]}, {"block": np.arange(i, min(i + lm_batch, tokens)) // 256})
               for i in range(0, tokens, lm_batch)]  # fmt: skip
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_cache(records, Path(tmp) / "cache", max_tokens=tokens)
        result["cache_write_tokens_per_second"] = tokens / (time.perf_counter() - start)
        cache = ActivationCache(Path(tmp) / "cache")
        batches = iter(CacheReplay(cache, [hookpoint], args.batch_size))
        seconds = best_seconds(lambda: next(batches)[hookpoint].to(args.device, torch.float32), args.repeats * 3)
        result["replay_tokens_per_second"] = args.batch_size / seconds
        step = step_in_process(args, "topk", "fp32")["tokens_per_second"]
        result["replay_sae_step_tokens_per_second"] = step
        result["replay_fraction_of_step"] = result["replay_tokens_per_second"] / step
        for count in sorted({1, args.sweep_saes}):
            result[f"replay_train_{count}_saes_tokens_per_second"] = train_from_cache(args, cache, count)
    one = result["replay_train_1_saes_tokens_per_second"]
    many = result[f"replay_train_{args.sweep_saes}_saes_tokens_per_second"]
    # Seconds per token of each SAE beyond the first, as a fraction of the seconds per token of one.
    result["sweep_marginal_cost_per_sae"] = (1 / many - 1 / one) / max(args.sweep_saes - 1, 1) / (1 / one)
    result["replay_train_fraction_of_step"] = one / step
    return result


def train_from_cache(args, cache, count: int) -> float:
    """The trainer's tokens/s over a cache with `count` TopK SAEs of different k (best of two short runs)."""
    from hf_sae import SaeConfig, SaeModel
    from hf_sae.activation_cache import CacheReplay
    from hf_sae.arguments import SaeTrainingArguments
    from hf_sae.training import SaeTrainer

    rates = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as out:
            saes = {f"k{args.k + i}": SaeModel(SaeConfig(d_in=args.d_in, num_latents=args.num_latents,
                    architecture="topk", k=args.k + i, hookpoint=args.hookpoint)).to(args.device)
                    for i in range(count)}  # fmt: skip
            train = SaeTrainingArguments(train_tokens=args.batch_size * args.replay_steps, batch_size=args.batch_size,
                                         report_to="none", save_steps=0, output_dir=out,
                                         b_dec_init="mean")  # fmt: skip
            trainer = SaeTrainer(train, saes, CacheReplay(cache, [args.hookpoint], args.batch_size))
            start = time.perf_counter()
            trainer.train()
            rates.append(trainer.state.tokens / (time.perf_counter() - start))
            trainer.end()
    return max(rates)


def launched_run(args, count: int, **flags) -> tuple[float, str]:
    """(tokens/s, the log) of the end-to-end run on `count` processes of one thread each, launched by torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as out:
        command = [*local_launch(count), str(Path(__file__).parent / "train_sae.py")]
        for name, value in {**e2e_settings(args, out), **flags}.items():
            command += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
        log = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stderr
        report = json.loads((Path(out) / "metrics.json").read_text())[args.hookpoint]
    return report["train_tokens"] / report["train_seconds"], log


def processes(args) -> dict:
    """End-to-end tokens/s with 1 and `args.processes` processes of one thread each, launched by torchrun."""
    result = {f"processes_{count}_tokens_per_second": launched_run(args, count)[0] for count in (1, args.processes)}
    one, many = result["processes_1_tokens_per_second"], result[f"processes_{args.processes}_tokens_per_second"]
    result["processes_scaling_efficiency"] = many / (args.processes * one)
    return result


def feature_shards(args) -> dict:
    """End-to-end tokens/s of one process holding the whole SAE and of `args.processes` feature shards each holding
    1 / N of it (`--shard_features N`), and the bytes shard 0 put into each collective per step (from its log)."""
    one = launched_run(args, 1)[0]
    many, log = launched_run(args, args.processes, shard_features=args.processes)
    moved = log.split("Feature shard 0 moved ", 1)[1].split(" per step: ", 1)[1].splitlines()[0]
    return {"shards_1_tokens_per_second": one, f"shards_{args.processes}_tokens_per_second": many,
            "shards_bytes_per_step": json.loads(moved.replace("'", '"'))}  # fmt: skip


def report_replay(results: dict, count: int) -> None:
    print(f"cache: write {results['cache_write_tokens_per_second']:,.0f} tok/s, replay "
          f"{results['replay_tokens_per_second']:,.0f} tok/s = {results['replay_fraction_of_step']:.1f}x the TopK "
          f"fp32 SAE step ({results['replay_sae_step_tokens_per_second']:,.0f} tok/s); training from the cache "
          f"{results['replay_train_1_saes_tokens_per_second']:,.0f} tok/s "
          f"({100 * results['replay_train_fraction_of_step']:.0f}% of the step)", flush=True)  # fmt: skip
    marginal = results["sweep_marginal_cost_per_sae"]
    line = f"sweep of {count} SAEs: each extra SAE costs {100 * marginal:.0f}% of one SAE's training time"
    if harvest_rate := results.get("harvest_stopped_bf16_tokens_per_second"):  # a live run pays the LM forward once
        one = results["replay_train_1_saes_tokens_per_second"]
        line += f", {100 * marginal / one / (1 / harvest_rate + 1 / one):.1f}% of a live one-SAE run's"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["roofline", "harvest", "sae", "e2e"])
    parser.add_argument("--device", default=default_device())
    # The default setup: SmolLM2 layer 15, 9,216 latents, k 32, batches of 4,096 tokens per SAE step.
    shape = {"model": "smollm2-135m-instruct", "hookpoint": "model.layers.15", "d_in": 576, "num_latents": 9216,
             "k": 32, "batch_size": 4096, "context_size": 256, "lm_batch_size": 8, "repeats": 6,
             "e2e_tokens": 4096 * 40}  # fmt: skip
    for name, default in shape.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--processes", type=int, default=2, help="Processes for the `processes` section.")
    parser.add_argument("--replay_tokens", type=int, default=4096 * 32, help="Tokens in the `replay` section's cache.")
    parser.add_argument("--replay_steps", type=int, default=20, help="Trainer steps per `replay` measurement.")
    parser.add_argument("--sweep_saes", type=int, default=4, help="SAEs in the `replay` section's sweep.")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    parser.add_argument("--_one_step", nargs=2, help=argparse.SUPPRESS)  # internal: one SAE step in this process
    add_circuit_arguments(parser)
    args = parser.parse_args()
    # As hf-sae runs (HF_SAE_KEEP_FREED_MEMORY=0 measures glibc's defaults): the roofline and the steps alike.
    kept = keep_freed_memory()
    if args._one_step:
        print(json.dumps(sae_step(args, *args._one_step)))
        return
    if args._one_attribution or args._one_clt_step:
        print(json.dumps(circuit_sections(args)))
        return

    results: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"),
        "torch": torch.__version__,
        "keep_freed_memory": kept,
        "shape": {"d_in": args.d_in, "num_latents": args.num_latents, "k": args.k, "batch_size": args.batch_size},
    }
    if "roofline" in args.sections or "sae" in args.sections:
        results.update(roofline(args))
        print("matmul roofline: " + ", ".join(f"{name} {results[f'matmul_{name}_gflops']:.0f} GFLOP/s "
                                              f"({results[f'matmul_{name}_kernel']})"
                                              for name in args.precisions), flush=True)  # fmt: skip
    if "harvest" in args.sections:
        results.update(harvest(args))
        print({k: round(v) for k, v in results.items() if k.startswith("harvest_") and k.endswith("second")})
        print(f"harvest (pipeline, {results['harvest_lm_dtype']}): {results['harvest_tokens_per_second']:,.0f} tok/s, "
              f"{100 * results['harvest_fraction_of_roofline']:.0f}% of the forward's roofline "
              f"({results['forward_roofline_tokens_per_second']:,.0f} tok/s: {results['forward_params'] / 1e6:.1f}M "
              f"parameters at {results['forward_matmul_gflops']:.0f} GFLOP/s, {results['forward_matmul_kernel']})",
              flush=True)  # fmt: skip
    if "forward" in args.sections:
        results.update(forward_settings(args))
        ideal = results["forward_roofline_tokens_per_second"]
        print(f"stopped forward ({results['forward_lm_dtype']}), against its roofline of {ideal:,.0f} tok/s:")
        for name, value in results["forward_settings_tokens_per_second"].items():
            print(f"  {name:>20}: {value:>7,.0f} tok/s ({100 * value / ideal:.0f}%)")
        if "forward_compile_error" in results:
            print(f"  compiled layers: {results['forward_compile_error']}")
    if "sae" in args.sections:
        for architecture in args.architectures:
            for precision in args.precisions:
                step = step_in_process(args, architecture, precision)
                results[f"sae_{architecture}_{precision}"] = step
                topk = results.get(f"sae_topk_{precision}")
                if topk:
                    step["fraction_of_topk"] = step["tokens_per_second"] / topk["tokens_per_second"]
                    results[f"sae_{architecture}_{precision}_fraction_of_topk"] = step["fraction_of_topk"]
                print(f"SAE step {architecture:>20} {precision}: {step['tokens_per_second']:>9,.0f} tok/s at L0 "
                      f"{step['l0']:.1f} ({100 * step['fraction_of_roofline']:.0f}% of the {precision} encoder-matmul "
                      f"roofline at {step['matmul_gflops']:.0f} GFLOP/s"
                      + (f", {100 * step['fraction_of_topk']:.0f}% of TopK" if topk else "")
                      + f"); peak RSS {step['peak_rss_mb'] or 0:,.0f} MB", flush=True)  # fmt: skip
    if "e2e" in args.sections:
        results.update(end_to_end(args))
        line = f"end to end: {results['e2e_tokens_per_second']:,.0f} tok/s"
        if harvest_rate := results.get("harvest_tokens_per_second"):  # the same forward, dtype and shapes as the run
            results["e2e_fraction_of_harvest"] = results["e2e_tokens_per_second"] / harvest_rate
            line += f" ({100 * results['e2e_fraction_of_harvest']:.0f}% of harvesting alone)"
        print(line)
    if "replay" in args.sections:
        results.update(replay(args))
        report_replay(results, args.sweep_saes)
    if "shards" in args.sections:
        results.update(feature_shards(args))
        print(f"shards: 1 -> {results['shards_1_tokens_per_second']:,.0f} tok/s, {args.processes} feature shards -> "
              f"{results[f'shards_{args.processes}_tokens_per_second']:,.0f} tok/s, "
              f"{sum(results['shards_bytes_per_step'].values()):,} bytes per step", flush=True)  # fmt: skip
    if "processes" in args.sections:
        results.update(processes(args))
        print(f"processes: 1 -> {results['processes_1_tokens_per_second']:,.0f} tok/s, {args.processes} -> "
              f"{results[f'processes_{args.processes}_tokens_per_second']:,.0f} tok/s, scaling efficiency "
              f"{100 * results['processes_scaling_efficiency']:.0f}%", flush=True)  # fmt: skip
    results.update(circuit_sections(args))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
