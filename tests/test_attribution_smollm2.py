"""Attribution on the real SmolLM2-135M-Instruct (30 layers, float32), with random JumpReLU skip transcoders for all
30 layers (no trained set ships with the project): encoders scaled so that a pre-activation is about N(0, 1) on the
prompt, decoders and skip terms scaled to a third of the MLP outputs, so that a few features fire per layer and
position and the error nodes carry the rest of each MLP output. Random features explain little, so the checks are
those that hold for any transcoders: with its error nodes the replacement gives the real logits, and every target is
the sum of its edges and constants (completeness). Tolerances are relative to the largest value compared.

    .venv/bin/python tests/test_attribution_smollm2.py   # attribution time, peak memory and scores at 4, 8, 16 tokens
"""

import resource
import subprocess
import sys
import time

import pytest
import torch
from test_attribution import completeness_errors, relative_error

from hf_sae import SaeConfig, SaeModel, load_model
from hf_sae.attribution import ReplacementModel, attribute, graph_scores
from hf_sae.hookpoints import capture_activations

pytestmark = pytest.mark.slow

TEXT = " The capital of France is Paris, and the capital of Germany is Berlin. The capital of Italy"
LATENTS, THRESHOLD = 256, 2.5  # about 1.6 of 256 features fire per layer and position
TOL_LOGITS = 1e-5  # measured 6.5e-7: the replacement's frozen float32 RMSNorms against the real ones
TOL_COMPLETE = 2e-5  # measured 2.1e-6 (features) and 1.0e-6 (logits): float32 sums of about 500 edges each


def prompt(tokenizer, n_tokens: int) -> torch.Tensor:
    """BOS and the first `n_tokens - 1` tokens of TEXT (SmolLM2's tokenizer adds no BOS; attribution skips
    position 0)."""
    ids = tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return torch.cat([torch.tensor([tokenizer.bos_token_id]), ids[: n_tokens - 1]])


def random_transcoders(lm, ids: torch.Tensor, seed: int = 0) -> dict[int, SaeModel]:
    """A random JumpReLU skip transcoder per layer, scaled to that layer's MLP input and output on `ids`."""
    n_layers, width = lm.config.num_hidden_layers, lm.config.hidden_size
    sites = [(f"model.layers.{layer}.mlp.input", f"model.layers.{layer}.mlp") for layer in range(n_layers)]
    with torch.no_grad():
        acts = capture_activations(lm, [site for pair in sites for site in pair], ids[None])
    generator = torch.Generator().manual_seed(seed)
    transcoders = {}
    for layer, (source, target) in enumerate(sites):
        x_norm = float(acts[source][0, 1:].norm(dim=-1).mean())  # BOS left out: its norm is an outlier
        y_norm = float(acts[target][0, 1:].norm(dim=-1).mean())
        config = SaeConfig(d_in=width, num_latents=LATENTS, architecture="jumprelu", hookpoint=source,
                           output_hookpoint=target, skip_connection=True, apply_b_dec_to_input=False)  # fmt: skip
        sae = SaeModel(config).eval()
        with torch.no_grad():
            for name, scale in (("W_enc", 1 / x_norm), ("W_dec", y_norm / width**0.5 / 3),
                                ("W_skip", y_norm / x_norm / width**0.5 / 3)):  # fmt: skip
                tensor = getattr(sae, name)
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
            sae.b_enc.zero_(), sae.b_dec.zero_(), sae.threshold.fill_(THRESHOLD)
        transcoders[layer] = sae
    return transcoders


@pytest.fixture(scope="module")
def setup():
    lm, tokenizer = load_model()
    ids = prompt(tokenizer, 6)
    return lm, tokenizer, ids, random_transcoders(lm, ids)


def test_the_replacement_with_error_nodes_gives_smollm2s_logits(setup):
    lm, _, ids, transcoders = setup
    replacement = ReplacementModel(lm, transcoders, ids)
    with torch.no_grad():
        real = lm(ids[None]).logits[0]
    assert lm.config.num_hidden_layers == 30 and real.dtype == torch.float32
    assert relative_error(replacement.logits(), real) < TOL_LOGITS
    active = (replacement.activations != 0).sum((1, 2))
    assert (active > 0).all() and active.sum() < 1000  # every layer has features, a few per position
    without_errors = replacement.logits(terms=list(replacement.feature_out))
    assert relative_error(without_errors, real) > 0.05  # the error nodes matter


def test_every_target_of_a_smollm2_graph_is_the_sum_of_its_edges(setup):
    lm, tokenizer, ids, transcoders = setup
    graph = attribute(lm, tokenizer, transcoders, ids, max_feature_nodes=None)
    assert graph.logit_tokens[0] == " Paris"  # "The capital of France is": the real model's answer
    assert graph.feature_nodes()[:, 0].unique().tolist() == list(range(30)) and graph.n_logits >= 1
    feature_error, logit_error = completeness_errors(lm, transcoders, graph)
    assert feature_error < TOL_COMPLETE and logit_error < TOL_COMPLETE
    replacement_score, completeness_score = graph_scores(graph)
    assert 0 < replacement_score < 1 and 0 < completeness_score < 1


def measure(n_tokens: int) -> str:
    """One prompt of `n_tokens`, in a process of its own so that its peak memory is this attribution's."""
    lm, tokenizer = load_model()
    ids = prompt(tokenizer, n_tokens)
    transcoders = random_transcoders(lm, ids)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is in KiB on Linux)
    start, cpu_start = time.perf_counter(), time.process_time()
    graph = attribute(lm, tokenizer, transcoders, ids, max_feature_nodes=None)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    replacement_score, completeness_score = graph_scores(graph)
    return (f"| {n_tokens} | {len(graph.active_features)} | {seconds:.1f} | {cpu_seconds:.1f} | "
            f"{peak:.2f} ({peak - before:+.2f}) | "
            f"{replacement_score:.3f} | {completeness_score:.3f} |")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(measure(int(sys.argv[1])))
    else:
        print("| tokens | features | wall s | CPU s | peak RSS GiB (over the model) | replacement | completeness |")
        print("|---|---|---|---|---|---|---|")
        for n in (4, 8, 16):
            result = subprocess.run([sys.executable, __file__, str(n)], capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1], flush=True)
