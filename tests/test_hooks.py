"""SaeHooks and capture_activations on tiny random LMs of several families: every mode, every error."""

import pytest
import torch
from conftest import BOS_ID, EOS_ID, PAD_ID, make_tiny_lm

from hf_sae.configuration_sae import SaeConfig
from hf_sae.errors import HookpointError, SteeringError
from hf_sae.hookpoints import capture_activations, resolve_hookpoints
from hf_sae.hooks import SaeHooks
from hf_sae.modeling_sae import SaeModel

ATOL = 1e-5


def make_sae(d_in: int, architecture: str = "relu", hookpoint: str | None = None, seed: int = 0) -> SaeModel:
    torch.manual_seed(seed)
    k = 5 if architecture == "topk" else None
    sae = SaeModel(SaeConfig(d_in=d_in, num_latents=40, architecture=architecture, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # most latents fire on random activations, so edits have something to act on
    return sae.eval()


def hooks_of(model: torch.nn.Module) -> dict[str, tuple]:
    """Every hook id on every module: equal before and after means nothing was left behind."""
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._forward_hooks_always_called))
        for name, m in model.named_modules()
    }


def block_io(model, hookpoint: str, input_ids, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of `hookpoint`, logits) from a plain forward, recorded by a hook independent of hf_sae."""
    seen = {}
    handle = model.get_submodule(hookpoint).register_forward_hook(lambda m, a, o: seen.setdefault("x", o))
    try:
        logits = model(input_ids, **kwargs).logits
    finally:
        handle.remove()
    return seen["x"], logits


def next_input(model, hookpoint: str, input_ids, **kwargs) -> torch.Tensor:
    """The input of block `hookpoint` as the model runs now, read by a plain pre-hook."""
    seen = {}
    handle = model.get_submodule(hookpoint).register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    try:
        model(input_ids, **kwargs)
    finally:
        handle.remove()
    return seen["x"]


# ---------------------------------------------------------------------------------------------------------------------
# record


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_record_equals_encode_of_hidden_states(tiny_lm, input_ids, architecture):
    model, blocks = tiny_lm.model, tiny_lm.blocks
    saes = {name: make_sae(tiny_lm.hidden_size, architecture, seed=i) for i, name in enumerate(blocks)}
    with torch.no_grad():
        clean = model(input_ids, output_hidden_states=True)
        last, _ = block_io(model, blocks[-1], input_ids)
        with SaeHooks(model, saes, all_tokens=True).record(inputs=True, reconstructions=True) as recorder:
            logits = model(input_ids).logits
    assert torch.equal(logits, clean.logits)  # recording alone changes nothing
    for i, name in enumerate(blocks):
        # hidden_states[i + 1] is block i's output, except the last, which has the final norm applied.
        x = last if name == blocks[-1] else clean.hidden_states[i + 1]
        (z,) = recorder.latents[name]
        assert z.shape == (*input_ids.shape, 40)
        assert torch.equal(recorder.inputs[name][0], x)
        torch.testing.assert_close(z, saes[name].encode(x))
        torch.testing.assert_close(recorder.reconstructions[name][0], saes[name].decode(z))
        assert recorder.masks[name][0].all()
        if architecture == "topk":
            assert int((z != 0).sum(-1).max()) <= 5


def test_input_spelling_is_previous_blocks_output(tiny_lm, input_ids):
    model, blocks = tiny_lm.model, tiny_lm.blocks
    names = [blocks[0] + ".input", blocks[1] + ".input"]
    hooks = SaeHooks(model, {name: make_sae(tiny_lm.hidden_size) for name in names})
    with torch.no_grad(), hooks.record(inputs=True) as recorder:
        clean = model(input_ids, output_hidden_states=True)
    assert torch.equal(recorder.inputs[names[0]][0], clean.hidden_states[0])  # the embeddings
    assert torch.equal(recorder.inputs[names[1]][0], clean.hidden_states[1])  # block 0's output
    acts = capture_activations(model, [names[1], blocks[0]], input_ids)
    assert torch.equal(acts[names[1]], acts[blocks[0]])


def test_base_model_relative_names_resolve(tiny_llama):
    resolved = resolve_hookpoints(tiny_llama.model, ["layers.1", "model.layers.1.input"])
    assert resolved["layers.1"].path == "model.layers.1" and not resolved["layers.1"].is_input
    assert resolved["model.layers.1.input"].is_input
    base = resolve_hookpoints(tiny_llama.model.model, ["model.layers.1"])  # a head model's spelling on the base
    assert base["model.layers.1"].module is tiny_llama.model.model.layers[1]


def test_sae_list_uses_config_hookpoint(tiny_llama, input_ids):
    sae = make_sae(24, hookpoint="model.layers.1")
    with torch.no_grad(), SaeHooks(tiny_llama.model, [sae]).record() as recorder:
        tiny_llama.model(input_ids)
    assert list(recorder.latents) == ["model.layers.1"]
    with pytest.raises(HookpointError, match=r"config.hookpoint.*None"):
        SaeHooks(tiny_llama.model, [make_sae(24)])
    with pytest.raises(HookpointError, match=r"their own hookpoint.*model.layers.1.*model.layers.1"):
        SaeHooks(tiny_llama.model, [sae, make_sae(24, hookpoint="model.layers.1")])


# ---------------------------------------------------------------------------------------------------------------------
# splice


def test_splice_with_error_term_equals_clean(tiny_lm, input_ids):
    model = tiny_lm.model
    hooks = SaeHooks(model, {name: make_sae(tiny_lm.hidden_size, seed=i) for i, name in enumerate(tiny_lm.blocks)})
    with torch.no_grad():
        clean = model(input_ids).logits
        with hooks.splice(error_term=True):
            spliced = model(input_ids).logits
    torch.testing.assert_close(spliced, clean, atol=ATOL, rtol=0)


def test_splice_without_error_term_is_the_reconstruction(tiny_lm, input_ids):
    model, name = tiny_lm.model, tiny_lm.blocks[0]
    sae = make_sae(tiny_lm.hidden_size)
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: sae(o).reconstruction)
    with torch.no_grad():
        try:
            manual = model(input_ids).logits
        finally:
            handle.remove()
        clean = model(input_ids).logits
        with SaeHooks(model, {name: sae}, all_tokens=True).splice():
            spliced = model(input_ids).logits
    assert (spliced - clean).abs().max() > 1e-3
    torch.testing.assert_close(spliced, manual, atol=ATOL, rtol=0)


def test_tuple_output_keeps_the_rest(tiny_llama, input_ids):
    model, name = tiny_llama.model, "model.layers.0.self_attn"  # returns (attn_output, attn_weights)
    sae = make_sae(24)
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        try:
            model(input_ids)
            with (
                SaeHooks(model, {name: sae}, all_tokens=True).splice(),
                SaeHooks(model, {name: sae}, all_tokens=True).record() as recorder,
            ):
                model(input_ids)
        finally:
            handle.remove()
    (clean_out, clean_weights), (spliced_out, spliced_weights) = seen
    assert isinstance(seen[1], tuple) and torch.equal(spliced_weights, clean_weights)
    torch.testing.assert_close(spliced_out, sae.decode(sae.encode(clean_out)))
    torch.testing.assert_close(recorder.latents[name][0], sae.encode(clean_out))


def test_splice_in_bfloat16_model_casts_back(input_ids):
    lm = make_tiny_lm("llama")
    model = lm.model.to(torch.bfloat16)
    hooks = SaeHooks(model, {lm.blocks[1]: make_sae(24)})  # the SAE stays float32
    with torch.no_grad():
        clean = model(input_ids).logits
        with hooks.steer(3, 0.0):
            assert torch.equal(model(input_ids).logits, clean)
        with hooks.splice(error_term=True), hooks.record(inputs=True) as recorder:
            spliced = model(input_ids).logits
    assert spliced.dtype == torch.bfloat16 and recorder.latents[lm.blocks[1]][0].dtype == torch.float32
    torch.testing.assert_close(spliced, clean, atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# steer and ablate


def test_steer_alpha_zero_is_exact(tiny_lm, input_ids):
    model = tiny_lm.model
    hooks = SaeHooks(model, {tiny_lm.blocks[0]: make_sae(tiny_lm.hidden_size)})
    with torch.no_grad():
        clean = model(input_ids).logits
        with hooks.steer([1, 7], 0.0):
            assert torch.equal(model(input_ids).logits, clean)


def test_steer_adds_alpha_times_decoder_row(tiny_lm, input_ids):
    model, (block, after, *_) = tiny_lm.model, tiny_lm.blocks
    sae = make_sae(tiny_lm.hidden_size)
    with torch.no_grad():
        clean = next_input(model, after, input_ids)
        with SaeHooks(model, {block: sae}, all_tokens=True).steer(7, 3.5):
            steered = next_input(model, after, input_ids)
        with SaeHooks(model, {block: sae}, all_tokens=True).steer({7: 3.5, 2: -1.0}):
            both = next_input(model, after, input_ids)
    torch.testing.assert_close(steered - clean, (3.5 * sae.W_dec[7]).expand_as(clean), atol=ATOL, rtol=0)
    expected = 3.5 * sae.W_dec[7] - sae.W_dec[2]
    torch.testing.assert_close(both - clean, expected.expand_as(clean), atol=ATOL, rtol=0)


def test_clamp_sets_latent_and_keeps_error_term(tiny_llama, input_ids):
    model, block, after = tiny_llama.model, "model.layers.0", "model.layers.1"
    sae = make_sae(24)
    hooks = SaeHooks(model, {block: sae}, all_tokens=True)
    with torch.no_grad():
        clean = next_input(model, after, input_ids)
        with hooks.record() as recorder, hooks.steer(5, 9.0, mode="clamp"):
            clamped = next_input(model, after, input_ids)
    z = sae.encode(clean)
    assert torch.all(recorder.latents[block][0][..., 5] == 9.0)
    torch.testing.assert_close(clamped - clean, (9.0 - z[..., 5:6]) * sae.W_dec[5], atol=ATOL, rtol=0)


def test_steer_only_at_positions(tiny_gpt2, input_ids):
    model, block, after = tiny_gpt2.model, "transformer.h.0", "transformer.h.1"
    sae = make_sae(36)
    with torch.no_grad():
        clean = next_input(model, after, input_ids)
        with SaeHooks(model, {block: sae}).steer(4, 2.0, positions=[2, 5]):
            steered = next_input(model, after, input_ids)
        with SaeHooks(model, {block: sae}).steer(4, 2.0, positions=slice(3, None)):
            tail = next_input(model, after, input_ids)
    changed = (steered != clean).any(-1)
    assert changed[:, [2, 5]].all() and changed.sum() == 2 * input_ids.shape[0]
    torch.testing.assert_close(steered[:, 2] - clean[:, 2], (2.0 * sae.W_dec[4]).expand(2, -1), atol=ATOL, rtol=0)
    assert torch.equal((tail != clean).any(-1)[0], torch.arange(7) >= 3)


def test_ablate_zeros_feature(tiny_lm, input_ids):
    model, (block, after, *_) = tiny_lm.model, tiny_lm.blocks
    sae = make_sae(tiny_lm.hidden_size)
    hooks = SaeHooks(model, {block: sae}, all_tokens=True)
    with torch.no_grad():
        clean = next_input(model, after, input_ids)
        z = sae.encode(clean)
        feature = int(z[0].gt(0).sum(0).argmax())  # a latent that fires
        with hooks.record() as recorder, hooks.ablate([feature]):
            ablated = next_input(model, after, input_ids)
    assert torch.all(recorder.latents[block][0][..., feature] == 0)
    expected = -z[..., feature : feature + 1] * sae.W_dec[feature]
    torch.testing.assert_close(ablated - clean, expected, atol=ATOL, rtol=0)


def test_contexts_nest_on_several_hookpoints(tiny_llama, input_ids):
    model = tiny_llama.model
    saes = {"model.layers.0": make_sae(24, seed=0), "model.layers.2.input": make_sae(24, seed=1)}
    hooks = SaeHooks(model, saes)
    before = hooks_of(model)
    with torch.no_grad(), hooks.record() as outer:
        with hooks.steer(3, 0.0, hookpoint="model.layers.0"), hooks.record(hookpoints="model.layers.0") as inner:
            with hooks.splice(error_term=True, hookpoints=["model.layers.2.input"]):
                model(input_ids)
            assert hooks_of(model) != before
        model(input_ids)
    assert hooks_of(model) == before
    assert [len(v) for v in outer.latents.values()] == [2, 2] and list(inner.latents) == ["model.layers.0"]
    torch.testing.assert_close(outer.latents["model.layers.0"][0], outer.latents["model.layers.0"][1])


# ---------------------------------------------------------------------------------------------------------------------
# generate, padding


def test_generate_with_steering_changes_new_tokens(tiny_llama):
    model, block = tiny_llama.model, "model.layers.2"
    sae = make_sae(24)
    prompt = torch.tensor([[BOS_ID, 5, 17, 33, 8]])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    hooks = SaeHooks(model, {block: sae}, all_tokens=True)
    with torch.no_grad():
        plain = model.generate(prompt, **kwargs)
        with hooks.steer(0, 60.0):
            steered = model.generate(prompt, **kwargs)
        with hooks.steer(1, 4.0, mode="clamp"), hooks.record() as recorder:
            model.generate(prompt, **kwargs)
    assert not torch.equal(plain[:, 5:], steered[:, 5:])
    steps = recorder.latents[block]
    assert [t.shape[1] for t in steps] == [5, 1, 1, 1, 1, 1]  # one entry per step, the KV cache in use
    assert torch.all(recorder.cat(block)[..., 1] == 4.0)  # the edit reaches every new token


def test_generate_positions_are_absolute_with_left_padding(tiny_llama):
    model, block = tiny_llama.model, "model.layers.1"
    prompts = torch.tensor([[BOS_ID, 5, 17, 33, 8], [PAD_ID, PAD_ID, BOS_ID, 9, 40]])
    mask = (prompts != PAD_ID).long()
    hooks = SaeHooks(model, {block: make_sae(24)})
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    with torch.no_grad(), hooks.steer(2, 7.0, mode="clamp", positions=[1, 6]), hooks.record() as recorder:
        model.generate(prompts, attention_mask=mask, **kwargs)
    z = recorder.cat(block)[..., 2]  # (batch, 5 + 4)
    masks = torch.cat(recorder.masks[block], dim=1)
    positions = masks.long().cumsum(-1) - 1
    clamped = (positions == 1) | (positions == 6)
    assert torch.equal(masks[1], torch.arange(9) >= 2)
    assert torch.all(z[clamped & masks] == 7.0) and not torch.any(z[~clamped] == 7.0)
    assert clamped[0, 6] and clamped[1, 8]  # a generated token: absolute, past the cache, after the padding


def test_positions_continue_through_a_cache_without_mask(tiny_llama, input_ids):
    model, block = tiny_llama.model, "model.layers.1"
    hooks = SaeHooks(model, {block: make_sae(24)})
    with torch.no_grad(), hooks.steer(3, 6.0, mode="clamp", positions=slice(5, 6)), hooks.record() as recorder:
        cache = model(input_ids[:, :4], use_cache=True).cache
        model(input_ids[:, 4:], cache=cache)  # positions 4, 5, 6
    first, second = (z[..., 3] for z in recorder.latents[block])
    assert not torch.any(first == 6.0) and torch.all(second[:, 1] == 6.0) and not torch.any(second[:, [0, 2]] == 6.0)


def test_left_padded_batch_matches_unpadded(tiny_lm):
    model, block = tiny_lm.model, tiny_lm.blocks[0]
    sequences = [torch.tensor([BOS_ID, 5, 17, 33, 8, 61]), torch.tensor([BOS_ID, 9, 40])]
    width = max(len(s) for s in sequences)
    ids = torch.stack([torch.cat([torch.full((width - len(s),), PAD_ID), s]) for s in sequences])
    mask = (torch.arange(width) >= torch.tensor([width - len(s) for s in sequences])[:, None]).long()
    hooks = SaeHooks(model, {block: make_sae(tiny_lm.hidden_size)})
    with torch.no_grad(), hooks.steer(2, 3.0, positions=[1]), hooks.record() as recorder:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # plain forwards don't derive them from the mask
        padded = model(ids, attention_mask=mask, position_ids=position_ids).logits
        singles = [model(s[None]).logits[0] for s in sequences]
    latents = recorder.latents[block]
    assert torch.equal(recorder.masks[block][0], mask.bool())
    torch.testing.assert_close(
        recorder.tokens(block)[:9], torch.cat([latents[1][0], latents[2][0]]), atol=ATOL, rtol=0
    )
    for row, (seq, single) in enumerate(zip(sequences, singles)):
        torch.testing.assert_close(padded[row, width - len(seq) :], single, atol=1e-4, rtol=0)
        assert latents[0][row, width - len(seq) + 1, 2] == latents[row + 1][0, 1, 2]  # the edit at position 1


# ---------------------------------------------------------------------------------------------------------------------
# the LM is never changed


def test_exception_leaves_no_hooks_and_identical_model(tiny_lm, input_ids):
    model = tiny_lm.model
    saes = {
        tiny_lm.blocks[0]: make_sae(tiny_lm.hidden_size),
        tiny_lm.blocks[1] + ".input": make_sae(tiny_lm.hidden_size),
    }
    with torch.no_grad():
        clean = model(input_ids).logits
    before, state = hooks_of(model), {k: v.clone() for k, v in model.state_dict().items()}
    hooks = SaeHooks(model, saes)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        with hooks.record(), hooks.splice(), hooks.steer(1, 5.0, hookpoint=tiny_lm.blocks[0]):
            model(input_ids)
            raise RuntimeError("boom")
    assert hooks_of(model) == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, clean)


def test_width_mismatch_raised_at_first_forward_and_cleaned_up(tiny_llama, input_ids):
    model, name = tiny_llama.model, "model.layers.0.mlp.act_fn"  # width 36, not knowable without running
    hooks = SaeHooks(model, {name: make_sae(24)})
    before = hooks_of(model)
    with pytest.raises(HookpointError, match=r"d_in=24.*width 36"), hooks.record():
        model(input_ids)
    assert hooks_of(model) == before


# ---------------------------------------------------------------------------------------------------------------------
# errors before anything runs


def test_unknown_hookpoint_lists_close_names(tiny_llama):
    with pytest.raises(HookpointError, match=r"model\.layer\.1.*'model\.layers\.1'"):
        SaeHooks(tiny_llama.model, {"model.layer.1": make_sae(24)})
    with pytest.raises(HookpointError, match=r"'model\.layers\.2\.input'"):
        capture_activations(tiny_llama.model, ["model.layers.2.inptu"], torch.ones(1, 2, dtype=torch.long))


def test_a_misspelt_hookpoint_key_is_refused_not_attached_at_the_config_hookpoint(tiny_llama, input_ids):
    model, sae = tiny_llama.model, make_sae(24, hookpoint="model.layers.1")
    assert "model.layers.99" not in dict(model.named_modules())  # the key names no module; the config's does
    with pytest.raises(HookpointError, match=r"key 'model.layers.99', which is not a module of LlamaForCausalLM; "
                       r"closest are \[.*'model.layers.1'.*config says 'model.layers.1'"):  # fmt: skip
        SaeHooks(model, {"model.layers.99": sae})
    # Labels still attach at the config's hookpoint: a name without a dot, and a sweep's name for the hookpoint.
    x = capture_activations(model, ["model.layers.1"], input_ids)["model.layers.1"]
    for label in ("16k", "k32/model.layers.1"):
        with torch.no_grad(), SaeHooks(model, {label: sae}).record(inputs=True) as recorder:
            model(input_ids)
        assert torch.equal(recorder.cat(label, "inputs"), x)


def test_positions_beyond_the_text_warn_naming_them_and_an_empty_slice_is_refused(tiny_llama, caplog):
    model, block, after = tiny_llama.model, "model.layers.0", "model.layers.1"
    hooks, ids = SaeHooks(model, {block: make_sae(24)}), torch.tensor([[BOS_ID, 5, 17, 33]])
    with torch.no_grad():
        clean = next_input(model, after, ids)
        with caplog.at_level("WARNING"), hooks.steer(4, 2.0, positions=[2, 1000]):
            steered = next_input(model, after, ids)
    changed = (steered != clean).any(-1)[0]
    assert changed.tolist() == [False, False, True, False]  # 1000 edited nothing: the condition the warning names
    assert "positions=[2, 1000]: [1000] lie beyond the text, which ran through position 3 (4 tokens" in caplog.text
    caplog.clear()
    with torch.no_grad(), caplog.at_level("WARNING"), hooks.steer(4, 2.0, positions=slice(9, None)):
        assert torch.equal(next_input(model, after, ids), clean)
    assert "positions=slice(9, None, None): [9] lie beyond the text" in caplog.text
    caplog.clear()
    with torch.no_grad(), caplog.at_level("WARNING"), hooks.steer(4, 2.0, positions=[3]):
        model(ids)
    assert caplog.text == ""  # within the text: nothing to say
    for empty in (slice(3, 3), slice(5, 2)):
        with pytest.raises(SteeringError, match=r"selects no token \(it stops at or before it starts\)"):
            with hooks.steer(4, 2.0, positions=empty):
                pass


@pytest.mark.parametrize("site", ["model.rotary_emb", "model.layers"])
def test_an_sae_at_a_module_without_per_token_activations_is_refused(tiny_llama, input_ids, site):
    model = tiny_llama.model
    if site == "model.rotary_emb":  # the condition: its output is the position tables, the same for another text
        cos, sin = block_io(model, site, input_ids)[0]
        assert cos.shape[0] == 1 and torch.equal(cos, block_io(model, site, input_ids.flip(-1))[0][0])
        width, reason = cos.shape[-1], r"is a rotary embedding \(LlamaRotaryEmbedding\): its output is the cos / sin"
    else:  # the condition: a ModuleList's hooks never fire
        width, reason = 24, r"is a ModuleList, a container that never runs itself"
    with pytest.raises(HookpointError, match=rf"The SAE at `{site}` acts on `{site}`, which {reason}"):
        SaeHooks(model, {site: make_sae(width)})


# Sub-sites whose width is known without running: a norm and, where it is an nn.Linear, the MLP's output projection.
STATIC_SITES = {
    "llama": [".post_attention_layernorm", ".mlp.down_proj"],
    "gpt2": [".ln_2"],  # GPT-2's projections are Conv1D, whose width shows only at the first forward
    "gpt_neox": [".post_attention_layernorm", ".mlp.dense_4h_to_h"],
    "qwen2": [".input_layernorm", ".mlp.down_proj"],
}


def test_width_mismatch_names_both_widths_statically(tiny_lm):
    wrong = tiny_lm.hidden_size + 5
    for suffix in ["", ".input", *STATIC_SITES[tiny_lm.family]]:
        with pytest.raises(HookpointError, match=rf"d_in={wrong}.*width {tiny_lm.hidden_size}"):
            SaeHooks(tiny_lm.model, {tiny_lm.blocks[1] + suffix: make_sae(wrong)})  # before any forward


def test_bad_steering_arguments(tiny_llama):
    hooks = SaeHooks(tiny_llama.model, {"model.layers.0": make_sae(24), "model.layers.1": make_sae(24)})
    with pytest.raises(HookpointError, match="hookpoint="), hooks.steer(1):
        pass
    with pytest.raises(HookpointError, match="No SAE"), hooks.ablate(1, hookpoint="model.layers.2"):
        pass
    with pytest.raises(ValueError, match="latent indices"), hooks.steer(40, hookpoint="model.layers.0"):
        pass
    with pytest.raises(ValueError, match="positions"), hooks.steer(1, hookpoint="model.layers.0", positions=[-1]):
        pass
    assert not hooks._handles


# ---------------------------------------------------------------------------------------------------------------------
# stopping the forward after the deepest hookpoint


def test_capture_stops_after_deepest_hookpoint(tiny_lm, input_ids):
    model, blocks = tiny_lm.model, tiny_lm.blocks
    wanted = [blocks[-2] + ".mlp", blocks[0], blocks[0] + ".input"]  # not in execution order on purpose
    ran = []
    later = [model.get_submodule(blocks[-1]), model.get_output_embeddings()]
    handles = [m.register_forward_pre_hook(lambda m, a: ran.append(m)) for m in later]
    before = hooks_of(model)  # the test's own hooks included
    try:
        with torch.no_grad():
            acts = capture_activations(model, wanted, input_ids)
        assert hooks_of(model) == before
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [] and list(acts) == wanted
    with torch.no_grad():
        for name in wanted[:2]:
            full, _ = block_io(model, name, input_ids, use_cache=False)
            assert torch.equal(acts[name], full)
        assert torch.equal(acts[wanted[2]], next_input(model, blocks[0], input_ids))


def test_capture_under_autocast_and_grad(tiny_llama, input_ids):
    model, name = tiny_llama.model, "model.layers.1"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        acts = capture_activations(model, [name], input_ids, attention_mask=torch.ones_like(input_ids))
        full, _ = block_io(model, name, input_ids, use_cache=False)
        mlp = capture_activations(model, ["model.layers.1.mlp"], input_ids)["model.layers.1.mlp"]
    assert torch.equal(acts[name], full) and mlp.dtype == torch.bfloat16
    assert capture_activations(model, ["model.layers.0"], input_ids)["model.layers.0"].requires_grad


def test_from_pretrained_loads_and_attaches_in_one_call(tiny_llama, input_ids, tmp_path):
    from hf_sae import save_saes

    hookpoint = tiny_llama.blocks[1]
    sae = make_sae(tiny_llama.hidden_size, "topk", hookpoint)
    save_saes({hookpoint: sae}, tmp_path / "saes")
    hooks = SaeHooks.from_pretrained(tiny_llama.model, str(tmp_path / "saes"), hookpoints=[hookpoint], all_tokens=True)
    assert list(hooks.saes) == [hookpoint] and torch.equal(hooks.saes[hookpoint].W_dec, sae.W_dec)
    with torch.no_grad(), hooks.record() as recorder:
        tiny_llama.model(input_ids)
    x = capture_activations(tiny_llama.model, [hookpoint], input_ids)[hookpoint]
    torch.testing.assert_close(recorder.cat(hookpoint), sae.encode(x))


def test_two_saes_on_one_hookpoint_record_the_same_activations_and_splice_in_order(tiny_llama, input_ids):
    hookpoint = tiny_llama.blocks[1]
    narrow, wide = (
        make_sae(tiny_llama.hidden_size, "topk", hookpoint),
        make_sae(tiny_llama.hidden_size, "relu", hookpoint, 1),
    )
    hooks = SaeHooks(tiny_llama.model, {"narrow": narrow, "wide": wide}, all_tokens=True)
    x = capture_activations(tiny_llama.model, [hookpoint], input_ids)[hookpoint]
    with torch.no_grad(), hooks.record(inputs=True) as recorder:
        tiny_llama.model(input_ids)
    assert torch.equal(recorder.cat("narrow", "inputs"), x) and torch.equal(recorder.cat("wide", "inputs"), x)
    torch.testing.assert_close(recorder.cat("wide"), wide.encode(x))
    with torch.no_grad(), hooks.splice():  # the narrow SAE's reconstruction, then the wide one's of that
        spliced = next_input(tiny_llama.model, tiny_llama.blocks[2], input_ids)  # what the next block receives
    with torch.no_grad():
        torch.testing.assert_close(spliced, wide(narrow(x).reconstruction).reconstruction)


def test_record_top_k_keeps_only_the_largest_latents(tiny_gpt2, input_ids):
    hookpoint = tiny_gpt2.blocks[0]
    sae = make_sae(tiny_gpt2.hidden_size, "relu", hookpoint)
    hooks = SaeHooks(tiny_gpt2.model, [sae])
    with torch.no_grad(), hooks.record() as dense, hooks.record(top_k=3) as sparse:
        tiny_gpt2.model(input_ids)
    values, indices = dense.cat(hookpoint).topk(3, dim=-1)
    assert sparse.latents[hookpoint] == [] and torch.equal(sparse.cat(hookpoint, "top_indices"), indices)
    assert torch.equal(sparse.cat(hookpoint, "top_values"), values)
    assert sparse.tokens(hookpoint, "top_values").shape == (input_ids.numel(), 3)
    with pytest.raises(HookpointError, match="`top_k` must be a positive integer or None; got 0"):
        with hooks.record(top_k=0):
            pass


def test_an_sae_from_another_base_model_warns_naming_both(tiny_llama, caplog):
    hookpoint = tiny_llama.blocks[0]
    config = SaeConfig(d_in=tiny_llama.hidden_size, num_latents=48, architecture="topk", k=4, hookpoint=hookpoint,
                       base_model_name_or_path="someone/other-model")  # fmt: skip
    tiny_llama.model.name_or_path = "me/tiny-llama"
    with caplog.at_level("WARNING"):
        SaeHooks(tiny_llama.model, [SaeModel(config)])
    assert "trained on 'someone/other-model', but it is attached to 'me/tiny-llama'" in caplog.text


def test_a_mask_passed_by_position_places_edits_as_one_passed_by_name(tiny_llama):
    model, block = tiny_llama.model, "model.layers.1"
    ids = torch.tensor([[BOS_ID, 5, 17, 33], [PAD_ID, PAD_ID, BOS_ID, 9]])
    mask = (ids != PAD_ID).long()
    hooks = SaeHooks(model, {block: make_sae(24)}, all_tokens=True)
    with torch.no_grad(), hooks.steer(2, 7.0, mode="clamp", positions=[0]), hooks.record() as recorder:
        by_name = model(input_ids=ids, attention_mask=mask).logits
        by_position = model(ids, mask).logits
    named, positional = (z[..., 2] for z in recorder.latents[block])
    assert named[1, 2] == 7.0 and named[1, 0] != 7.0  # the condition: the padded row's first real token is clamped
    assert torch.equal(positional, named) and torch.equal(by_position, by_name)


def test_hooks_code_each_token_alone_even_for_an_sae_left_in_train_mode(tiny_llama):
    model, block = tiny_llama.model, "model.layers.1"
    torch.manual_seed(0)
    sae = SaeModel(SaeConfig(d_in=24, num_latents=40, architecture="batchtopk", k=3, hookpoint=block))
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    assert sae.training  # as a freshly built SAE is
    hooks, ids = SaeHooks(model, [sae]), torch.tensor([[BOS_ID, 5, 17, 33], [BOS_ID, 9, 40, 61]])
    with torch.no_grad(), hooks.record() as recorder:
        model(ids)
        model(ids[:1])
    together, alone = recorder.latents[block]
    assert not sae.training and torch.equal(together[0], alone[0])  # the other row changes nothing


def test_recorded_tensors_leave_autograd_unless_asked(tiny_llama, input_ids):
    model, block = tiny_llama.model, "model.layers.1"
    hooks = SaeHooks(model, {block: make_sae(24)})
    with hooks.record(inputs=True, reconstructions=True) as kept_out:
        logits = model(input_ids).logits
    assert logits.requires_grad  # the forward did build a graph
    assert not any(t[block][0].requires_grad for t in (kept_out.latents, kept_out.inputs, kept_out.reconstructions))
    with hooks.record(detach=False) as attached:
        model(input_ids)
    attached.latents[block][0].sum().backward()  # gradients reach the LM through the recorded latents
    assert model.model.embed_tokens.weight.grad is not None


def test_saes_of_the_wrong_type_are_refused_clearly(tiny_llama):
    with pytest.raises(HookpointError, match=r"SaeHooks takes SAEs: a SaeModel, .*got 'model.layers.0'"):
        SaeHooks(tiny_llama.model, "model.layers.0")
    with pytest.raises(HookpointError, match=r"SaeHooks takes SaeModel objects; got 'x' \(str\)"):
        SaeHooks(tiny_llama.model, {"model.layers.0": "x"})


def test_one_hookpoint_name_is_one_hookpoint_not_its_letters(tiny_llama, input_ids):
    acts = capture_activations(tiny_llama.model, "model.layers.0", input_ids)
    assert list(acts) == ["model.layers.0"]


# ---------------------------------------------------------------------------------------------------------------------
# which tokens: the rule training and evaluation use (lm_forward), unless all_tokens

LOUD = 50  # a token whose embedding is scaled up, so that its activation is a norm outlier


def with_a_loud_token(lm):
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[LOUD] *= 300
    return lm.model


def counted_by_hand(ids: torch.Tensor, x: torch.Tensor, special=(PAD_ID, BOS_ID, EOS_ID), factor=10.0) -> list:
    """The rule spelled out for one sequence: not position 0, not special, norm at most `factor` times the lower
    median of the other candidates' norms."""
    norms = x.float().norm(dim=-1).tolist()
    candidates = [t for t in range(1, len(norms)) if int(ids[t]) not in special]
    median = sorted(norms[t] for t in candidates)[(len(candidates) - 1) // 2]
    return [t in candidates and norms[t] <= factor * median for t in range(len(norms))]


def test_hooks_act_only_on_the_tokens_training_counts(tiny_llama):
    model, block = with_a_loud_token(tiny_llama), tiny_llama.blocks[1]
    sae, ids = make_sae(24), torch.tensor([[BOS_ID, 5, 17, LOUD, 33, EOS_ID, 9, 12]])
    with torch.no_grad():
        x, clean_logits = block_io(model, block, ids)
        norms = x[0].norm(dim=-1)
        assert norms[3] > 10 * norms[[1, 2, 4, 6, 7]].median()  # the loud token is an outlier of its block
        expected = torch.tensor([counted_by_hand(ids[0], x[0])])
        assert expected.tolist() == [[False, True, True, False, True, False, True, True]]
        hooks = SaeHooks(model, {block: sae})
        with hooks.record(reconstructions=True) as recorder:
            assert torch.equal(model(ids).logits, clean_logits)
        (z,), (counted,), (recon,) = recorder.latents[block], recorder.counted[block], recorder.reconstructions[block]
        assert torch.equal(counted, expected)
        torch.testing.assert_close(z[expected], sae.encode(x)[expected], atol=ATOL, rtol=0)
        assert torch.all(z[~expected] == 0) and torch.all(recon[~expected] == 0)
        assert (sae.encode(x)[~expected] != 0).any()  # the zeros are the hooks', not the SAE's
        with hooks.splice():
            spliced = next_input(model, tiny_llama.blocks[2], ids)
        assert torch.equal(spliced[~expected], x[~expected])  # skipped tokens pass through unchanged
        torch.testing.assert_close(spliced[expected], sae(x[expected]).reconstruction, atol=ATOL, rtol=0)
        with hooks.steer(7, 3.0):
            steered = next_input(model, tiny_llama.blocks[2], ids)
        assert torch.equal(steered[~expected], x[~expected])
        torch.testing.assert_close(steered[expected] - x[expected], (3.0 * sae.W_dec[7]).expand(5, -1), atol=ATOL,
                                   rtol=0)  # fmt: skip
        with SaeHooks(model, {block: sae}, all_tokens=True).splice():
            everywhere = next_input(model, tiny_llama.blocks[2], ids)
    torch.testing.assert_close(everywhere, sae(x).reconstruction, atol=ATOL, rtol=0)


def test_without_outlier_rule_or_with_a_tokenizer_the_skipped_tokens_change(tiny_llama):
    model, block = with_a_loud_token(tiny_llama), tiny_llama.blocks[1]
    ids = torch.tensor([[BOS_ID, 5, 17, LOUD, 7, EOS_ID, 9, 12]])

    class Tokenizer:
        all_special_ids = [BOS_ID, 7]  # 7 special, EOS not

    with torch.no_grad():
        with SaeHooks(model, {block: make_sae(24)}, outlier_factor=None).record() as no_outliers:
            model(ids)
        with SaeHooks(model, {block: make_sae(24)}, tokenizer=Tokenizer()).record() as by_tokenizer:
            model(ids)
    assert no_outliers.counted[block][0].tolist() == [[False, True, True, True, True, False, True, True]]
    assert by_tokenizer.counted[block][0].tolist() == [[False, True, True, False, False, True, True, True]]


def test_under_a_kv_cache_each_new_token_is_judged_against_its_sequence_so_far(tiny_llama):
    model, block = with_a_loud_token(tiny_llama), tiny_llama.blocks[1]
    prompt, steps = torch.tensor([[BOS_ID, 5, 17, 33]]), [LOUD, EOS_ID, 20]
    hooks = SaeHooks(model, {block: make_sae(24)})
    with torch.no_grad(), hooks.record(inputs=True) as recorder:
        out = model(prompt, use_cache=True)
        ids = prompt
        for token in steps:  # as generate() feeds them: one token, the cache and the whole mask
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            out = model(ids[:, -1:], cache=out.past_key_values, attention_mask=torch.ones_like(ids))
    counted = [mask.tolist() for mask in recorder.counted[block]]
    assert counted == [[[False, True, True, True]], [[False]], [[False]], [[True]]]
    norms = torch.cat(recorder.inputs[block], dim=1)[0].norm(dim=-1)  # (8,) the prompt, then one per step
    assert norms[4] > 10 * norms[[1, 2, 3, 4]].median()  # the loud token exceeded its sequence's median so far
    assert norms[6] <= 10 * norms[[1, 2, 3, 4, 6]].median()  # and the last one did not


def test_generate_with_left_padding_skips_each_rows_first_real_token(tiny_llama):
    model, block = tiny_llama.model, tiny_llama.blocks[1]
    ids = torch.tensor([[PAD_ID, PAD_ID, BOS_ID, 5, 17], [BOS_ID, 8, 9, 40, 61]])
    mask = (ids != PAD_ID).long()
    with torch.no_grad(), SaeHooks(model, {block: make_sae(24)}).record() as recorder:
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD_ID)
    first, *later = recorder.counted[block]
    assert first.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    generated = tokens[:, ids.shape[1] : -1]  # the tokens fed back, one a step
    expected = ~torch.isin(generated, torch.tensor([PAD_ID, BOS_ID, EOS_ID]))
    assert torch.equal(torch.cat(later, dim=1), expected)
