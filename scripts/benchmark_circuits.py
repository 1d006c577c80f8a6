"""The circuit sections of `scripts/benchmark.py`: attribution graphs and cross-layer transcoder training.

attribution  `hf_sae.attribute` on the default model with a transcoder for every layer, per prompt length: seconds,
             peak memory, active features, backward rows, against the roofline of the backward passes it needs
             (each row of a batch is a backward pass through every layer's matmuls on the prompt, 2 FLOPs per weight
             per token, at this machine's matmul rate measured in the same process)
clt          the trainer's own step (`SaeTrainer.step`) on a cross-layer transcoder over stored activations: tokens/s
             and peak memory, against the roofline of its encoder and decoder matmuls

  python scripts/benchmark.py --sections attribution --prompt_lengths 4 8 16
  python scripts/benchmark.py --sections attribution --transcoders path/to/transcoders
  python scripts/benchmark.py --sections clt --clt_layers 30 --clt_latents 1024
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

# A sentence of ordinary prose, cut to each prompt length in tokens.
PROMPT = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp, and the ships that passed "
    "the rocky coast at night relied on its steady beam to find their way safely into the harbour."
)


def add_arguments(parser) -> None:
    parser.add_argument("--prompt_lengths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument(
        "--transcoders",
        default=None,
        help="Per-layer transcoders or a CLT (any source `hf_sae.load_transcoders` reads); by default "
        "random JumpReLU transcoders of --attribution_latents latents with about --k active per token.",
    )
    parser.add_argument("--attribution_latents", type=int, default=2304)
    parser.add_argument("--max_feature_nodes", type=int, default=8192)
    parser.add_argument("--clt_layers", type=int, default=30)
    parser.add_argument("--clt_latents", type=int, default=1024)
    parser.add_argument("--clt_batch_size", type=int, default=1024)
    parser.add_argument("--_one_attribution", type=int, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--_one_clt_step", action="store_true", help=argparse.SUPPRESS)


def in_process(flag: list[str], device: str) -> dict:
    """One measurement in a fresh process of `scripts/benchmark.py`, so that its peak memory is its own."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark.py")
    command = [sys.executable, script, *flag, *sys.argv[1:]]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)


def random_transcoders(model, width: int, k: int, device: str) -> dict:
    """A JumpReLU transcoder per layer, MLP input to MLP output, thresholds set so that about `k` latents fire per
    token on real text, decoders scaled to the MLP outputs' size: as active as trained ones, so attribution visits as
    many rows."""
    from hf_sae import SaeConfig, SaeModel

    seen = {}
    hooks = [
        layer.mlp.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (a[0][0], out[0])))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(torch.tensor([list(range(1000, 1256))], device=device))
    for hook in hooks:
        hook.remove()
    transcoders = {}
    for layer, (x, y) in seen.items():
        config = SaeConfig(
            d_in=x.shape[-1],
            num_latents=width,
            architecture="jumprelu",
            hookpoint=f"model.layers.{layer}.mlp.input",
            output_hookpoint=f"model.layers.{layer}.mlp",
            apply_b_dec_to_input=False,
        )
        sae = SaeModel(config).to(device).eval()
        with torch.no_grad():
            sae.threshold.fill_(sae.pre_activation(x).flatten().quantile(1 - k / width))
            sae.W_dec.mul_(y.norm(dim=-1).mean() / sae.decode(sae.encode(x)).norm(dim=-1).mean().clamp_min(1e-6))
        transcoders[layer] = sae
    return transcoders


def attribution_once(args, n_tokens: int) -> dict:
    """`attribute` on the first `n_tokens` tokens of `PROMPT`, in this process."""
    from benchmark import best_matmul, peak_rss_mb

    from hf_sae import attribute, load_model, load_transcoders

    model, tokenizer = load_model()
    model = model.to(args.device)
    if args.transcoders:
        transcoders = load_transcoders(args.transcoders)
        transcoders = transcoders if isinstance(transcoders, dict) else transcoders.to(args.device)
    else:
        transcoders = random_transcoders(model, args.attribution_latents, args.k, args.device)
    ids = tokenizer(PROMPT).input_ids[:n_tokens]
    start = time.perf_counter()
    graph = attribute(model, tokenizer, transcoders, ids, max_feature_nodes=args.max_feature_nodes)
    seconds = time.perf_counter() - start
    rows = graph.n_features + graph.n_logits  # targets, each one row of a batched backward pass
    params = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "norm" not in name)
    gflops = best_matmul(
        64 * n_tokens, model.config.hidden_size, model.config.intermediate_size, args.device, torch.float32, 3
    )[0]
    ideal = rows * n_tokens * 2 * params / (gflops * 1e9)
    return {
        "tokens": n_tokens,
        "seconds": seconds,
        "active_features": len(graph.active_features),
        "feature_nodes": graph.n_features,
        "backward_rows": rows,
        "matmul_gflops": gflops,
        "fraction_of_roofline": ideal / seconds,
        "peak_rss_mb": peak_rss_mb() if args.device == "cpu" else None,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
    }


def attribution(args) -> dict:
    runs = [in_process(["--_one_attribution", str(n)], args.device) for n in args.prompt_lengths]
    for run in runs:
        memory = run["peak_rss_mb"] or run["peak_gpu_memory_mb"]
        print(
            f"attribution, {run['tokens']:>3} tokens: {run['seconds']:7.1f} s, {run['active_features']:,} active "
            f"features, {run['backward_rows']:,} backward rows, {100 * run['fraction_of_roofline']:.0f}% of the "
            f"backward roofline ({run['matmul_gflops']:.0f} GFLOP/s); peak {memory:,.0f} MB",
            flush=True,
        )
    return {"attribution": runs}


def clt_step(args) -> dict:
    """The trainer's own optimiser step on a BatchTopK cross-layer transcoder over `args.clt_layers` layers, in this
    process; its ideal cost is the dense encoder matmuls, 2 * d_in * num_latents FLOPs per token and layer (the
    decoders run sparsely over the k active latents, as for the SAE step)."""
    from benchmark import best_matmul, best_seconds, peak_rss_mb

    from hf_sae import CltConfig, CltModel
    from hf_sae.arguments import SaeTrainingArguments
    from hf_sae.training import SaeTrainer

    torch.manual_seed(0)
    n_layers, tokens = args.clt_layers, args.clt_batch_size
    config = CltConfig(
        n_layers=n_layers, d_in=args.d_in, num_latents=args.clt_latents, architecture="batchtopk", k=args.k
    )
    clt = CltModel(config).to(args.device).train()
    batch = {
        site: torch.randn(tokens, args.d_in, device=args.device)
        for site in [*config.hookpoints, *config.output_hookpoints]
    }
    with tempfile.TemporaryDirectory() as out:  # no logging steps, no checkpoints: the step alone
        train = SaeTrainingArguments(
            train_tokens=tokens * 1000,
            batch_size=tokens,
            output_dir=out,
            learning_rate=1e-4,
            b_dec_init="zero",
            logging_steps=10**9,
            report_to="none",
            save_steps=0,
        )
        trainer = SaeTrainer(train, {"clt": clt}, buffer=None)
        trainer.prepare(batch)
    seconds = best_seconds(lambda: trainer.step([batch]), max(2, args.repeats // 2), warmup=1)
    gflops = best_matmul(tokens, args.d_in, args.clt_latents, args.device, torch.float32, args.repeats)[0]
    ideal = tokens * n_layers * 2 * args.d_in * args.clt_latents / (gflops * 1e9)
    return {
        "layers": n_layers,
        "latents_per_layer": args.clt_latents,
        "parameters": config.num_weights(),
        "tokens_per_second": tokens / seconds,
        "step_ms": 1000 * seconds,
        "matmul_gflops": gflops,
        "fraction_of_roofline": ideal / seconds,
        "peak_rss_mb": peak_rss_mb() if args.device == "cpu" else None,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
    }


def clt(args) -> dict:
    run = in_process(["--_one_clt_step"], args.device)
    memory = run["peak_rss_mb"] or run["peak_gpu_memory_mb"]
    print(
        f"CLT step, {run['layers']} layers x {run['latents_per_layer']:,} latents ({run['parameters'] / 1e6:.0f}M "
        f"parameters): {run['tokens_per_second']:,.0f} tok/s, {100 * run['fraction_of_roofline']:.0f}% of the "
        f"encoder-matmul roofline ({run['matmul_gflops']:.0f} GFLOP/s); peak {memory:,.0f} MB",
        flush=True,
    )
    return {"clt": run}


def run_sections(args) -> dict | None:
    """This module's sections that `args` asks for; the result of an internal one-measurement call, printed as JSON
    by the caller, or None."""
    if args._one_attribution:
        return attribution_once(args, args._one_attribution)
    if args._one_clt_step:
        return clt_step(args)
    results = {}
    if "attribution" in args.sections:
        results |= attribution(args)
    if "clt" in args.sections:
        results |= clt(args)
    return results
