"""Write the peer-format fixtures of tests/fixtures/formats/ with the peer packages' own save code and forward.

Run in a throwaway environment that has the peer packages (never hf_sae's own):

    python -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install torch==2.13.0   # CPU torch first
    /tmp/peer-venv/bin/pip install sae-lens eai-sparsify dictionary-learning
    /tmp/peer-venv/bin/python scripts/make_format_fixtures.py [--hf-sae-python .venv/bin/python]

Each fixture is one small SAE (d_in 64, 256 latents) whose every tensor is overwritten with seeded random values, so a
dropped or mis-transposed tensor shows. Beside it, `expected/<name>.safetensors` holds a fixed input `x` and the
`latents` and `reconstruction` that the package's own forward computes on it. Then hf_sae exports some fixtures
(`--hf-sae-python`), and the export is loaded back here with the peer package's own loader: `exports.json` records
how far its forward is from the original's.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "formats"
D_IN, LATENTS, K = 64, 256, 16


def inputs() -> torch.Tensor:
    return torch.randn(12, D_IN, generator=torch.Generator().manual_seed(0))


def randomize(module: torch.nn.Module, seed: int, thresholds: float = 0.3) -> None:
    """Every floating tensor random: weights ~ N(0, 1/d_in) scaled, biases small, thresholds positive and small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
            if "threshold" in name:
                tensor.copy_(noise.abs() * thresholds)
            elif tensor.ndim == 2:
                tensor.copy_(noise / D_IN**0.5)
            else:
                tensor.copy_(noise * 0.2)


def record(name: str, x: torch.Tensor, latents: torch.Tensor, reconstruction: torch.Tensor) -> None:
    path = ROOT / "expected" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"x": x, "latents": latents, "reconstruction": reconstruction}
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, path)
    print(f"{name}: l0 {float((latents != 0).sum(-1).float().mean()):.1f}")


# ---- SAELens ------------------------------------------------------------------------------------------------------


def saelens_fixtures(x: torch.Tensor) -> None:
    from sae_lens import SAE
    from sae_lens.saes import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    def metadata(hook: str, model: str = "gpt2-small", **extra) -> SAEMetadata:
        return SAEMetadata(hook_name=hook, model_name=model, model_class_name="HookedTransformer", **extra)

    inference = {
        "saelens_standard": StandardSAE(
            StandardSAEConfig(D_IN, LATENTS, metadata=metadata("blocks.3.hook_resid_pre"))
        ),
        "saelens_topk": TopKSAE(
            TopKSAEConfig(
                D_IN, LATENTS, k=K, rescale_acts_by_decoder_norm=True, metadata=metadata("blocks.2.hook_resid_post")
            )
        ),
        "saelens_jumprelu": JumpReLUSAE(
            JumpReLUSAEConfig(
                D_IN, LATENTS, apply_b_dec_to_input=False, metadata=metadata("blocks.4.hook_mlp_out", "gemma-2-2b")
            )
        ),
        "saelens_gated": GatedSAE(GatedSAEConfig(D_IN, LATENTS, metadata=metadata("blocks.1.hook_attn_out"))),
    }
    for seed, (name, sae) in enumerate(inference.items()):
        randomize(sae, seed)
        sae.save_model(ROOT / name)
        loaded = SAE.load_from_disk(ROOT / name)
        latents = loaded.encode(x)
        record(name, x, latents, loaded.decode(latents))

    # BatchTopK trains, then saves as a JumpReLU SAE with its global threshold per latent.
    cfg = BatchTopKTrainingSAEConfig(D_IN, LATENTS, k=K, metadata=metadata("blocks.5.hook_resid_post"))
    training = BatchTopKTrainingSAE(cfg)
    randomize(training, 10)
    training.topk_threshold = torch.tensor(0.05, dtype=torch.double)
    training.save_inference_model(ROOT / "saelens_batchtopk")
    loaded = SAE.load_from_disk(ROOT / "saelens_batchtopk")
    latents = loaded.encode(x)
    record("saelens_batchtopk", x, latents, loaded.decode(latents))

    # A mid-training checkpoint: training config, decoder norms not folded, activation scale in its own file.
    training = TopKTrainingSAE(
        TopKTrainingSAEConfig(D_IN, LATENTS, k=K, metadata=metadata("blocks.6.hook_resid_post"))
    )
    randomize(training, 11)
    folder = ROOT / "saelens_topk_checkpoint"
    training.save_model(folder)
    scale = 2.5
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scale}))
    with torch.no_grad():
        latents, _ = training.encode_with_hidden_pre(x * scale)
        record("saelens_topk_checkpoint", x, latents, training.decode(latents) / scale)

    # A pre-6.0 config as older SAELens releases on the Hub still carry (flat, `hook_point`, `activation_fn_str`).
    legacy = StandardSAE(StandardSAEConfig(D_IN, LATENTS))
    randomize(legacy, 12)
    folder = ROOT / "saelens_legacy"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({**legacy.state_dict(), "scaling_factor": torch.ones(LATENTS)}, folder / "sae_weights.safetensors")
    old_cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "use_cached_activations": False,
        "d_in": D_IN,
        "d_sae": LATENTS,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": False,
        "dtype": "torch.float32",
        "device": "cpu",
        "sae_lens_training_version": "3.13.0",
        "prepend_bos": True,
    }
    (folder / "cfg.json").write_text(json.dumps(old_cfg))
    loaded = SAE.load_from_disk(folder, dtype="float32")
    latents = loaded.encode(x)
    record("saelens_legacy", x, latents, loaded.decode(latents))


# ---- sparsify -----------------------------------------------------------------------------------------------------


def sparsify_fixtures(x: torch.Tensor) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    run = ROOT / "sparsify_run"
    for seed, (hookpoint, cfg) in enumerate(
        {
            "layers.3": SparseCoderConfig(expansion_factor=LATENTS // D_IN, num_latents=0, k=K),
            "layers.3.mlp": SparseCoderConfig(num_latents=LATENTS, k=K, transcode=True),
        }.items()
    ):
        sae = SparseCoder(D_IN, cfg)
        randomize(sae, 20 + seed)
        sae.save_to_disk(run / hookpoint)
        loaded = SparseCoder.load_from_disk(run / hookpoint)
        with torch.no_grad():
            out = loaded(x)
        latents = torch.zeros(x.shape[0], loaded.num_latents).scatter_(-1, out.latent_indices, out.latent_acts)
        record(f"sparsify_{hookpoint.replace('.', '_')}", x, latents, out.sae_out)
    # The run's own config.json, as the trainer writes it (`TrainConfig.save_json`); it names the base model.
    from sparsify.config import TrainConfig

    train_cfg = TrainConfig(SparseCoderConfig(k=K), hookpoints=["layers.3", "layers.3.mlp"]).to_dict()
    (run / "config.json").write_text(json.dumps({**train_cfg, "model": "EleutherAI/pythia-70m"}, indent=2))


# ---- dictionary_learning ------------------------------------------------------------------------------------------


def dictionary_learning_fixtures(x: torch.Tensor) -> None:
    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE, MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer, StandardTrainerAprilUpdate
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer

    common = {
        "steps": 10_000,
        "activation_dim": D_IN,
        "dict_size": LATENTS,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m",
    }
    common |= {"device": "cpu", "submodule_name": "resid_post_layer_3"}
    trainers = {
        "AutoEncoder": lambda: StandardTrainer(dict_class=AutoEncoder, **common),
        "AutoEncoderNew": lambda: StandardTrainerAprilUpdate(dict_class=AutoEncoderNew, **common),
        "AutoEncoderTopK": lambda: TopKTrainer(dict_class=AutoEncoderTopK, k=K, **common),
        "BatchTopKSAE": lambda: BatchTopKTrainer(dict_class=BatchTopKSAE, k=K, **common),
        "MatryoshkaBatchTopKSAE": lambda: MatryoshkaBatchTopKTrainer(
            dict_class=MatryoshkaBatchTopKSAE, k=K, group_fractions=[0.25, 0.75], **common
        ),
        "JumpReluAutoEncoder": lambda: JumpReluTrainer(dict_class=JumpReluAutoEncoder, **common),
        "GatedAutoEncoder": lambda: GatedSAETrainer(dict_class=GatedAutoEncoder, **common),
    }
    run = ROOT / "dictionary_learning_run"
    buffer = {"d_submodule": D_IN, "io": "out", "n_ctxs": 100, "ctx_len": 128, "refresh_batch_size": 8}
    for i, (dict_class, make) in enumerate(trainers.items()):
        trainer = make()
        ae = trainer.ae
        randomize(ae, 30 + i)
        if hasattr(ae, "threshold") and ae.threshold.ndim == 0:
            ae.threshold.fill_(0.05)
        folder = run / f"trainer_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        # As dictionary_learning.training.trainSAE writes them: config first, then the state dict.
        config = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in trainer.config.items()}
        (folder / "config.json").write_text(json.dumps({"trainer": config, "buffer": buffer}, indent=4))
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
        with torch.no_grad():
            latents = ae.encode(x)
            record(f"dictionary_learning_{dict_class}", x, latents, ae.decode(latents))


# ---- Gemma Scope and Llama Scope (no package writes them: their published layouts) ---------------------------------


def gemma_scope_fixture(x: torch.Tensor) -> None:
    """params.npz as Google published it; JumpReLU without b_dec subtraction (Gemma Scope, Lieberum et al. 2024)."""
    generator = np.random.default_rng(40)
    params = {
        "W_enc": generator.standard_normal((D_IN, LATENTS)) / D_IN**0.5,
        "W_dec": generator.standard_normal((LATENTS, D_IN)) / D_IN**0.5,
        "b_enc": generator.standard_normal(LATENTS) * 0.2,
        "b_dec": generator.standard_normal(D_IN) * 0.2,
        "threshold": np.abs(generator.standard_normal(LATENTS)) * 0.3,
    }
    params = {k: v.astype(np.float32) for k, v in params.items()}
    folder = ROOT / "gemma_scope" / "layer_3" / "width_256" / "average_l0_40"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **params)
    p = {k: torch.from_numpy(v).double() for k, v in params.items()}
    pre = x.double() @ p["W_enc"] + p["b_enc"]
    latents = (pre > p["threshold"]) * pre.relu()
    record("gemma_scope", x, latents, latents @ p["W_dec"] + p["b_dec"])


def llama_scope_fixture(x: torch.Tensor) -> None:
    """hyperparams.json + checkpoints/final.safetensors; the expected numbers are SAELens' own Llama Scope loader's."""
    from unittest import mock

    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig

    generator = torch.Generator().manual_seed(41)
    weights = {
        "encoder.weight": torch.randn(LATENTS, D_IN, generator=generator) / D_IN**0.5,
        "decoder.weight": torch.randn(D_IN, LATENTS, generator=generator) / D_IN**0.5,
        "encoder.bias": torch.randn(LATENTS, generator=generator) * 0.2,
        "decoder.bias": torch.randn(D_IN, generator=generator) * 0.2,
    }
    average_norm = 12.0
    hyperparams = {
        "d_model": D_IN,
        "d_sae": LATENTS,
        "hook_point_in": "blocks.3.hook_resid_post",
        "hook_point_out": "blocks.3.hook_resid_post",
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.3,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": average_norm, "out": average_norm},
        "sparsity_include_decoder_norm": True,
        "top_k": 50,
    }
    folder = ROOT / "llama_scope" / "Llama3_1-8B-Base-L3R-8x"
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(weights, folder / "checkpoints" / "final.safetensors")
    (folder / "hyperparams.json").write_text(json.dumps(hyperparams, indent=2))

    def local_download(repo_id, filename, subfolder=None, **_):
        return str(ROOT / "llama_scope" / (f"{subfolder}/{filename}" if subfolder else filename))

    with mock.patch.object(loaders, "hf_hub_download", local_download):
        cfg, state_dict, _ = loaders.llama_scope_sae_huggingface_loader(
            "fnlp/x",
            folder.name,
            cfg_overrides={"dtype": "float32"},  # its default rounds to bfloat16
        )
    sae = JumpReLUSAE(JumpReLUSAEConfig(D_IN, LATENTS, apply_b_dec_to_input=False))
    sae.load_state_dict({k: v.float() for k, v in state_dict.items()})
    sae.fold_activation_norm_scaling_factor(D_IN**0.5 / average_norm)  # as SAE.from_pretrained does
    latents = sae.encode(x)
    record("llama_scope", x, latents, sae.decode(latents))


# ---- transcoders --------------------------------------------------------------------------------------------------


def transcoder_fixtures(x: torch.Tensor) -> None:
    """SAELens' four transcoder classes (one into a narrower output) and a sparsify skip transcoder; the expected
    reconstruction is the package's own forward, the skip term included."""
    from sae_lens import SAE
    from sae_lens.saes import (
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
        Transcoder,
        TranscoderConfig,
    )
    from sae_lens.saes.sae import SAEMetadata
    from sparsify import SparseCoder, SparseCoderConfig

    def metadata(layer: int, model: str) -> SAEMetadata:
        hooks = {"hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_name_out": f"blocks.{layer}.hook_mlp_out"}
        return SAEMetadata(**hooks, model_name=model, model_class_name="HookedTransformer")

    transcoders = {
        "saelens_transcoder": Transcoder(
            TranscoderConfig(D_IN, LATENTS, d_out=D_IN, apply_b_dec_to_input=False, metadata=metadata(2, "gpt2-small"))
        ),
        "saelens_skip_transcoder": SkipTranscoder(
            SkipTranscoderConfig(
                D_IN, LATENTS, d_out=48, apply_b_dec_to_input=False, metadata=metadata(3, "gpt2-small")
            )
        ),
        "saelens_jumprelu_transcoder": JumpReLUTranscoder(
            JumpReLUTranscoderConfig(
                D_IN, LATENTS, d_out=D_IN, apply_b_dec_to_input=False, metadata=metadata(4, "gemma-2-2b")
            )
        ),
        "saelens_jumprelu_skip_transcoder": JumpReLUSkipTranscoder(
            JumpReLUSkipTranscoderConfig(
                D_IN, LATENTS, d_out=D_IN, apply_b_dec_to_input=False, metadata=metadata(5, "gemma-2-2b")
            )
        ),
    }
    for seed, (name, sae) in enumerate(transcoders.items()):
        randomize(sae, 50 + seed)
        sae.save_model(ROOT / name)
        loaded = SAE.load_from_disk(ROOT / name)
        with torch.no_grad():
            record(name, x, loaded.encode(x), loaded(x))

    run = ROOT / "sparsify_transcoder_run"
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=LATENTS, k=K, transcode=True, skip_connection=True))
    randomize(sae, 60)
    sae.save_to_disk(run / "layers.2.mlp")
    loaded = SparseCoder.load_from_disk(run / "layers.2.mlp")
    with torch.no_grad():
        out = loaded(x)
    latents = torch.zeros(x.shape[0], loaded.num_latents).scatter_(-1, out.latent_indices, out.latent_acts)
    record("sparsify_layers_2_mlp", x, latents, out.sae_out)
    from sparsify.config import TrainConfig

    train_cfg = TrainConfig(SparseCoderConfig(k=K, transcode=True, skip_connection=True), hookpoints=["layers.2.mlp"])
    (run / "config.json").write_text(json.dumps({**train_cfg.to_dict(), "model": "EleutherAI/pythia-70m"}, indent=2))


# ---- exports, read back by the peer packages ----------------------------------------------------------------------

EXPORTS = {  # fixture -> (SAE folder, target format)
    "saelens_standard": ("saelens_standard", "saelens"),
    "saelens_gated": ("saelens_gated", "saelens"),
    "dictionary_learning_BatchTopKSAE": ("dictionary_learning_run/trainer_3", "saelens"),
    "gemma_scope": ("gemma_scope/layer_3/width_256/average_l0_40", "saelens"),
    "saelens_topk": ("saelens_topk", "saelens"),
    "sparsify_layers_3": ("sparsify_run/layers.3", "sparsify"),
    "dictionary_learning_AutoEncoderTopK": ("dictionary_learning_run/trainer_2", "sparsify"),
    "saelens_jumprelu_skip_transcoder": ("saelens_jumprelu_skip_transcoder", "saelens"),
    "saelens_skip_transcoder": ("saelens_skip_transcoder", "saelens"),
    "sparsify_layers_2_mlp": ("sparsify_transcoder_run/layers.2.mlp", "sparsify"),
}


def check_exports(hf_sae_python: str) -> None:
    from sae_lens import SAE
    from safetensors.torch import load_file
    from sparsify import SparseCoder

    out = ROOT / "exports"
    for name, (folder, target) in EXPORTS.items():
        cmd = [hf_sae_python, "-m", "hf_sae.cli", "convert", str(ROOT / folder), str(out / name), "--to", target]
        subprocess.run([*cmd, "--overwrite", "true"], check=True)
    report = {}
    for name, (folder, target) in EXPORTS.items():
        expected = load_file(ROOT / "expected" / f"{name}.safetensors")
        x = expected["x"]
        with torch.no_grad():
            if target == "saelens":
                sae = SAE.load_from_disk(out / name)
                latents = sae.encode(x)
                reconstruction = sae(x)  # a transcoder's forward adds its skip term
            else:
                sae = SparseCoder.load_from_disk(out / name)
                result = sae(x)
                reconstruction = result.sae_out
                latents = torch.zeros(x.shape[0], sae.num_latents).scatter_(
                    -1, result.latent_indices, result.latent_acts
                )
        report[name] = {
            "source": folder,
            "format": target,
            "loader": "sae_lens.SAE.load_from_disk" if target == "saelens" else "sparsify.SparseCoder.load_from_disk",
            "latents_max_relative_error": _relative(latents, expected["latents"]),
            "reconstruction_max_relative_error": _relative(reconstruction, expected["reconstruction"]),
        }
        print(name, report[name])
    (out / "exports.json").write_text(json.dumps(report, indent=2) + "\n")


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).abs().max() / expected.abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-sae-python", help="hf_sae's Python, to export fixtures and check them here")
    parser.add_argument("--exports-only", action="store_true", help="only redo the export check")
    parser.add_argument("--transcoders-only", action="store_true", help="only write the transcoder fixtures")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = inputs()
    if args.transcoders_only:
        transcoder_fixtures(x)
        return 0
    if not args.exports_only:
        transcoder_fixtures(x)
        saelens_fixtures(x)
        sparsify_fixtures(x)
        dictionary_learning_fixtures(x)
        gemma_scope_fixture(x)
        llama_scope_fixture(x)
    if args.hf_sae_python:
        check_exports(args.hf_sae_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
