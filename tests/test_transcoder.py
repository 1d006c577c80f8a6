"""Transcoders and skip transcoders: the config, the prediction and its loss, training from one harvest, evaluation
with the transcoder standing in for the MLP, and splice / steer / record through SaeHooks, each checked against a
computation by hand on a tiny model."""

import json

import pytest
import torch
from conftest import make_tiny_lm
from test_training import run_args, tiny_run_inputs  # noqa: F401  (the module-scoped fixture)
from transformers import AutoModel, AutoModelForCausalLM

from hf_sae import ArgumentError, HookpointError, SaeConfig, SaeConfigError, SaeHooks, SaeModel
from hf_sae.activations import harvest
from hf_sae.arguments import SaeArguments
from hf_sae.evaluation import evaluate_saes
from hf_sae.hookpoints import capture_activations
from hf_sae.runners import train_saes

IN, OUT = "model.layers.1.mlp.input", "model.layers.1.mlp"


def make_transcoder(architecture="topk", skip=False, d_in=24, d_out=24, seed=0) -> SaeModel:
    k = {"k": 4} if architecture in ("topk", "batchtopk") else {}
    config = SaeConfig(d_in=d_in, d_out=d_out, num_latents=48, architecture=architecture, hookpoint=IN,
                       output_hookpoint=OUT, skip_connection=skip, apply_b_dec_to_input=False, **k)  # fmt: skip
    torch.manual_seed(seed)
    sae = SaeModel(config).eval()
    with torch.no_grad():  # random non-zero values everywhere, so that every term shows
        for tensor in sae.parameters():
            tensor.copy_(torch.randn_like(tensor) * 0.3)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.2)
    return sae


def manual_latents(sae: SaeModel, x: torch.Tensor) -> torch.Tensor:
    """The code written out: top k pre-activations for topk, relu, or relu above the threshold for jumprelu."""
    pre = x @ sae.W_enc.T + sae.b_enc
    if sae.config.architecture == "topk":
        values, indices = pre.topk(sae.config.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values)
    if sae.config.architecture == "jumprelu":
        return pre * (pre > sae.threshold)
    return pre.relu()


def manual_prediction(sae: SaeModel, x: torch.Tensor) -> torch.Tensor:
    y = manual_latents(sae, x) @ sae.W_dec + sae.b_dec
    return y + x @ sae.W_skip.T if sae.config.skip_connection else y


# ---- config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip_connection": True}, r"`skip_connection=True` applies only to a transcoder.*Set `output_hookpoint`"),
        ({"d_out": 12}, r"`d_out=12` applies only to a transcoder.*Set `output_hookpoint`"),
        ({"output_hookpoint": "model.layers.1", "hookpoint": "model.layers.1"}, r"equals `hookpoint`.*Drop"),
        ({"output_hookpoint": OUT, "hookpoint": IN, "d_out": 12}, r"apply_b_dec_to_input=True.*d_out=12.*d_in=24"),
        ({"output_hookpoint": OUT, "d_out": 0, "apply_b_dec_to_input": False}, r"`d_out` must be a positive integer"),
    ],
)
def test_bad_transcoder_configs_are_refused_naming_the_field_and_the_fix(kwargs, message):
    with pytest.raises(SaeConfigError, match=message):
        SaeConfig(d_in=24, num_latents=48, k=4, **kwargs)


def test_an_sae_config_resolves_d_out_to_d_in_and_is_no_transcoder():
    config = SaeConfig(d_in=24, num_latents=48, k=4, hookpoint="model.layers.1")
    assert (config.d_out, config.is_transcoder, config.skip_connection) == (24, False, False)


# ---- the model --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["topk", "relu", "jumprelu"])
@pytest.mark.parametrize("skip", [False, True])
def test_prediction_and_loss_equal_the_formula_written_out(architecture, skip):
    sae = make_transcoder(architecture, skip, d_out=20)
    x, y = torch.randn(2, 5, 24), torch.randn(2, 5, 20)
    out = sae(x, y, return_loss=True)
    expected = manual_prediction(sae, x)
    torch.testing.assert_close(out.reconstruction, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mse_loss, (expected - y).pow(2).sum(-1).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.latents, manual_latents(sae, x), rtol=1e-5, atol=1e-5)


def test_the_sparse_training_path_predicts_as_the_dense_formula_and_trains_w_skip():
    sae = make_transcoder("topk", skip=True, d_out=20).train()
    x, y = torch.randn(64, 24), torch.randn(64, 20)
    out = sae(x, y, dead_latents=torch.ones(48, dtype=torch.bool))
    torch.testing.assert_close(out.reconstruction, manual_prediction(sae, x), rtol=1e-5, atol=1e-5)
    assert out.auxiliary_loss is not None and out.auxiliary_loss > 0
    out.loss.backward()
    # W_skip's gradient is that of the MSE alone: 2/N * (ŷ - y)^T x.
    expected = 2 / 64 * (out.reconstruction - y).detach().T @ x
    torch.testing.assert_close(sae.W_skip.grad, expected, rtol=1e-4, atol=1e-5)


def test_a_transcoder_loss_without_its_target_or_with_the_wrong_tokens_is_a_clear_error():
    sae = make_transcoder(d_out=20)
    with pytest.raises(HookpointError, match=r"predicts `model.layers.1.mlp`.*pass it as `target`"):
        sae(torch.randn(3, 24), return_loss=True)
    with pytest.raises(HookpointError, match=r"must have shape \(3, 20\).*got \(4, 20\)"):
        sae(torch.randn(3, 24), torch.randn(4, 20), return_loss=True)


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "gated"])
def test_folding_two_scales_makes_the_transcoder_predict_raw_activations(architecture):
    sae = make_transcoder(architecture, skip=True, d_out=20)
    x, s_in, s_out = torch.randn(8, 24), 3.0, 0.25
    trained_on_scaled = sae(x * s_in).reconstruction / s_out
    sae.fold_activation_scale_(s_in, s_out)
    torch.testing.assert_close(sae(x).reconstruction, trained_on_scaled, rtol=1e-5, atol=1e-5)


def test_save_and_automodel_round_trip_keep_every_tensor_and_field(tmp_path):
    sae = make_transcoder("jumprelu", skip=True, d_out=20)
    sae.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, SaeModel)
    assert (loaded.config.output_hookpoint, loaded.config.d_out, loaded.config.skip_connection) == (OUT, 20, True)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert "jumprelu skip transcoder to `model.layers.1.mlp`" in (tmp_path / "README.md").read_text()


# ---- on a language model ----------------------------------------------------------------------------------------


@pytest.fixture
def llama():
    return make_tiny_lm("llama").model


def _logits_with_mlp_output(lm, fn, ids):
    """Logits with layer 1's MLP output y replaced by fn(mlp input, y), by a hook written here."""
    mlp = lm.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda module, args, y: fn(args[0], y))
    try:
        return lm(ids).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("skip", [False, True])
def test_splice_equals_replacing_the_mlp_by_hand(llama, skip):
    sae = make_transcoder("topk", skip)
    ids = torch.randint(3, 99, (2, 9))
    with torch.no_grad():
        by_hand = _logits_with_mlp_output(llama, lambda x, y: manual_prediction(sae, x), ids)
        clean = llama(ids).logits
        hooks = SaeHooks(llama, [sae], all_tokens=True)
        with hooks.splice():
            spliced = llama(ids).logits
        with hooks.splice(error_term=True):
            with_error = llama(ids).logits
    torch.testing.assert_close(spliced, by_hand, rtol=1e-5, atol=1e-5)
    assert (spliced - clean).abs().max() > 1e-2  # the splice changed something
    torch.testing.assert_close(with_error, clean, rtol=1e-5, atol=1e-5)


def test_steer_ablate_and_record_act_on_transcoder_latents(llama):
    sae = make_transcoder("topk")
    ids = torch.randint(3, 99, (2, 9))
    hooks = SaeHooks(llama, {"tc": sae}, all_tokens=True)
    with torch.no_grad():
        x = capture_activations(llama, [IN], ids)[IN]
        z = manual_latents(sae, x)
        steered_by_hand = _logits_with_mlp_output(llama, lambda x, y: y + 2.5 * sae.W_dec[7], ids)
        ablated_by_hand = _logits_with_mlp_output(llama, lambda x, y: y - z[..., 3:4] * sae.W_dec[3], ids)
        with hooks.record(reconstructions=True) as recorder, hooks.steer({7: 2.5}):
            steered = llama(ids).logits
        with hooks.ablate([3]):
            ablated = llama(ids).logits
    torch.testing.assert_close(steered, steered_by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ablated, ablated_by_hand, rtol=1e-5, atol=1e-5)
    expected = z.clone()
    expected[..., 7] += 2.5
    torch.testing.assert_close(recorder.cat("tc"), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        recorder.cat("tc", "reconstructions"), expected @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5
    )


def test_an_unknown_output_hookpoint_lists_the_closest_names(llama):
    config = {**make_transcoder().config.to_dict(), "output_hookpoint": "model.layers.1.mpl"}
    with pytest.raises(HookpointError, match=r"model.layers.1.mpl.*closest are \['model.layers.1.mlp'"):
        SaeHooks(llama, [SaeModel(SaeConfig.from_dict(config))])


def test_hookpoints_holding_different_tokens_are_refused_when_they_run(llama):
    # The rotary embedding's output is one (1, T, head_dim) table for the whole batch, not per token.
    config = SaeConfig(d_in=6, num_latents=48, k=4, hookpoint="model.rotary_emb", output_hookpoint=OUT, d_out=24,
                       apply_b_dec_to_input=False)  # fmt: skip
    hooks = SaeHooks(llama, [SaeModel(config)])
    with pytest.raises(HookpointError, match=r"reads `model.rotary_emb` with tokens shaped \(1, 9\).*\(2, 9\)"):
        with hooks.splice(), torch.no_grad():
            llama(torch.randint(3, 99, (2, 9)))


def test_one_harvest_of_both_hookpoints_equals_two_separate_captures(llama):
    ids = torch.randint(3, 99, (3, 12))
    with torch.no_grad():
        chunk = next(harvest(llama, [IN, OUT], [ids], exclude_token_ids=torch.tensor([0, 1, 2]), outlier_factor=None))
        x, y = (capture_activations(llama, [h], ids)[h][:, 1:].flatten(0, 1) for h in (IN, OUT))
    assert torch.equal(chunk[IN], x) and torch.equal(chunk[OUT], y)


def test_evaluation_measures_the_target_and_the_loss_with_the_transcoder_as_the_mlp(llama):
    sae = make_transcoder("relu")
    ids = torch.randint(3, 99, (4, 10))
    report = evaluate_saes(llama, {"tc": sae}, ids, outlier_factor=None, exclude_token_ids=[0, 1, 2])["tc"]
    with torch.no_grad():
        acts = capture_activations(llama, [IN, OUT], ids)
        x, y = acts[IN][:, 1:].flatten(0, 1), acts[OUT][:, 1:].flatten(0, 1)
        fvu = (manual_prediction(sae, x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()

        def spliced(x, y):  # position 0 keeps its clean activation, as evaluation never measures it
            prediction = manual_prediction(sae, x)
            prediction[:, 0] = y[:, 0]
            return prediction

        log_probs = _logits_with_mlp_output(llama, spliced, ids)[:, 1:-1].log_softmax(-1)
        ce = -log_probs.gather(-1, ids[:, 2:, None]).mean()
    assert report["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    assert report["ce_loss_spliced"] == pytest.approx(ce.item(), rel=1e-4)
    # the tiny random LM is near uniform, yet the splice moves its loss 30 times the tolerance above
    assert abs(report["ce_loss_spliced"] - report["ce_loss_clean"]) > 1e-3


# ---- training from the command line's arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"output_hookpoints": [OUT, OUT]}, r"--output_hookpoints must be 1 module path\(s\), one per --hookpoints"),
        ({"skip_connection": True}, r"--skip_connection must be used with transcoders only"),
        ({"transcode": True, "output_hookpoints": [OUT]}, r"--output_hookpoints must be left out with --transcode"),
    ],
)
def test_bad_transcoder_arguments_fail_before_the_lm_loads(overrides, message):
    with pytest.raises(ArgumentError, match=message):
        SaeArguments(hookpoints=["model.layers.1"], **overrides).check()


def test_transcode_pairs_each_module_input_with_its_output():
    args = SaeArguments(hookpoints=["model.layers.1.mlp", "model.layers.2.mlp"], transcode=True)
    assert args.hookpoint_pairs() == {IN: OUT, "model.layers.2.mlp.input": "model.layers.2.mlp"}
    assert args.harvested_hookpoints() == [IN, "model.layers.2.mlp.input", OUT, "model.layers.2.mlp"]


def test_a_trained_skip_transcoder_saves_loads_and_predicts_the_mlp(tiny_run_inputs, tmp_path):  # noqa: F811
    args = run_args(tiny_run_inputs, tmp_path / "run", hookpoints=[OUT], transcode=True, skip_connection=True)
    report = train_saes(*args)[IN]
    sae = SaeModel.from_pretrained(tmp_path / "run" / IN)
    assert (sae.config.hookpoint, sae.config.output_hookpoint, sae.config.skip_connection) == (IN, OUT, True)
    assert sae.W_skip.abs().sum() > 0  # the skip term trained
    assert report["l0"] == pytest.approx(4.0, abs=0.01)
    # The held-out FVU is that of the MLP's output, as the saved transcoder predicts it from the raw input.
    lm = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "lm")  # random tokens: trained beats untrained
    with torch.no_grad():
        acts = capture_activations(lm, [IN, OUT], torch.randint(3, 90, (8, 32)))
        x, y = acts[IN][:, 1:].flatten(0, 1), acts[OUT][:, 1:].flatten(0, 1)
        fvus = [
            (t(x).reconstruction - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
            for t in (sae, SaeModel(sae.config).eval())
        ]
    assert report["fvu"] < 0.9 and fvus[0] < 0.9 < fvus[1]
    assert json.loads((tmp_path / "run" / "training_args.json").read_text())["transcode"] is True


def test_bad_output_hookpoints_fail_before_training_naming_the_closest(tiny_run_inputs, tmp_path):  # noqa: F811
    args = run_args(tiny_run_inputs, tmp_path / "a", output_hookpoints=["model.layers.1.mpl"])
    with pytest.raises(HookpointError, match=r"model.layers.1.mpl.*closest are \['model.layers.1.mlp'"):
        train_saes(*args)
    args = run_args(tiny_run_inputs, tmp_path / "b", hookpoints=["model.rotary_emb"], output_hookpoints=[OUT])
    with pytest.raises(ArgumentError, match=r"one activation per token at both.*\(1, 2, 6\).*\(2, 2, 24\)"):
        train_saes(*args)
    args = run_args(tiny_run_inputs, tmp_path / "c", output_hookpoints=[OUT], distribute_hookpoints=True)
    with pytest.raises(ArgumentError, match=r"--distribute_hookpoints.*a transcoder needs two"):
        train_saes(*args)
