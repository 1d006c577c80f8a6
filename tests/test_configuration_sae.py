import json
import re

import pytest
from transformers import AutoConfig

import hf_sae
from hf_sae import SaeConfig, SaeConfigError


def test_expansion_factor_resolves_to_num_latents_and_is_not_stored(tmp_path):
    config = SaeConfig(d_in=576, expansion_factor=16, k=32)
    assert config.num_latents == 9216
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_latents"] == 9216
    assert "expansion_factor" not in saved


def test_round_trip_through_auto_config_keeps_every_field(tmp_path):
    config = SaeConfig(
        d_in=24,
        num_latents=96,
        architecture="jumprelu",
        sparsity_coefficient=0.25,
        jumprelu_init_threshold=0.05,
        jumprelu_bandwidth=0.02,
        apply_b_dec_to_input=False,
        hookpoint="model.layers.3",
        base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    config.save_pretrained(tmp_path / "sub")
    loaded = AutoConfig.from_pretrained(tmp_path, subfolder="sub")
    assert isinstance(loaded, SaeConfig)
    for field in ("d_in", "num_latents", "architecture", "k", "sparsity_coefficient", "jumprelu_init_threshold",
                  "jumprelu_bandwidth", "apply_b_dec_to_input", "hookpoint", "base_model_name_or_path"):  # fmt: skip
        assert getattr(loaded, field) == getattr(config, field), field


def test_version_is_stamped_on_save(tmp_path):
    config = SaeConfig(d_in=4, num_latents=8, architecture="relu", hf_sae_version="0.0.1")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["hf_sae_version"] == hf_sae.__version__


def test_config_is_immutable():
    config = SaeConfig(d_in=4, num_latents=8, k=2)
    with pytest.raises(SaeConfigError, match=r"immutable; cannot set `k` to 3"):
        config.k = 3
    assert config.k == 2


def test_unknown_key_from_a_newer_version_warns_and_loads(tmp_path, caplog):
    SaeConfig(d_in=4, num_latents=8, k=2).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["matryoshka_widths"] = [2, 8]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level("WARNING"):
        loaded = SaeConfig.from_pretrained(tmp_path)
    assert loaded.num_latents == 8
    assert "unknown keys ['matryoshka_widths']" in caplog.text
    assert not hasattr(loaded, "matryoshka_widths")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(d_in=8, num_latents=16, k=0), r"`k` must be a positive integer; got 0"),
        (dict(d_in=8, num_latents=16, k=16), r"`k` must be smaller than `num_latents` \(16\); got k=16"),
        (dict(d_in=8, num_latents=16, k=40), r"`k` must be smaller than `num_latents` \(16\); got k=40"),
        (dict(d_in=8, num_latents=16, architecture="topk"), r"architecture 'topk' needs `k`.*got k=None"),
        (dict(d_in=8, num_latents=16, architecture="batchtopk"), r"architecture 'batchtopk' needs `k`"),
        (
            dict(d_in=8, num_latents=16, architecture="matryoshka"),
            (
                r"one of relu, topk, batchtopk, matryoshka_batchtopk, jumprelu, gated; "
                r"got 'matryoshka'"
            ),
        ),  # fmt: skip
        (dict(d_in=0, num_latents=16, k=2), r"`d_in` must be a positive integer; got 0"),
        (dict(d_in=8, num_latents=-3, k=2), r"`num_latents` must be a positive integer; got -3"),
        (dict(d_in=8, k=2), r"needs `num_latents` or `expansion_factor`, got neither"),
        (dict(d_in=8, expansion_factor=0, k=2), r"`expansion_factor` must be a positive number, got 0"),
        (
            dict(d_in=8, num_latents=10, expansion_factor=2, k=2),
            (
                r"`num_latents=10` disagrees with "
                r"`expansion_factor=2` \(which gives 16"
            ),
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="relu", k=4),
            r"`k` applies only to topk, batchtopk, matryoshka_batchtopk; got k=4",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="matryoshka_batchtopk", k=2, matryoshka_group_sizes=[4, 8]),
            r"`matryoshka_group_sizes` \[4, 8\] sum to 12, .* num_latents=16\. Change the sizes to sum to 16, e\.g\.",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="matryoshka_batchtopk", k=2, matryoshka_group_sizes=[0, 16]),
            r"needs `matryoshka_group_sizes`, a list of positive integers .*; got \[0, 16\]\. Pass e\.g\. \[4, 12\]",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="matryoshka_batchtopk", k=2, matryoshka_group_sizes=[-4, 20]),
            r"a list of positive integers .*; got \[-4, 20\]",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="matryoshka_batchtopk", k=2),
            r"matryoshka_batchtopk needs `matryoshka_group_sizes`.*; got None",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, k=2, matryoshka_group_sizes=[4, 12]),
            r"`matryoshka_group_sizes` applies only to matryoshka_batchtopk; got \[4, 12\] with architecture 'topk'",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="relu", sparsity_coefficient=-1.0),
            r"`sparsity_coefficient` must be a number >= 0; got -1.0",
        ),  # fmt: skip
        (
            dict(d_in=8, num_latents=16, architecture="jumprelu", jumprelu_bandwidth=0.0),
            r"`jumprelu_bandwidth` must be a number > 0; got 0.0",
        ),  # fmt: skip
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(SaeConfigError, match=message):
        SaeConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(apply_b_dec_to_input="no"), r"`apply_b_dec_to_input` must be True or False; got 'no' \(str\)"),
        (dict(skip_connection=1), r"`skip_connection` must be True or False; got 1 \(int\)"),
        (dict(hookpoint=123), r"`hookpoint` must be a string; got 123 \(int\)"),
        (dict(base_model_name_or_path=["a"]), r"`base_model_name_or_path` must be a string; got \['a'\]"),
        (dict(architecture=["topk"]), r"`architecture` must be a string; got \['topk'\]"),
    ],
)
def test_flags_must_be_booleans_and_names_strings(kwargs, message):
    assert all(bool(v) for v in kwargs.values())  # each would pass as a truthy flag or a name if stored unchecked
    with pytest.raises(SaeConfigError, match=message):
        SaeConfig(d_in=8, num_latents=16, k=2, **kwargs)


def test_a_flag_spelt_as_a_string_in_config_json_is_refused_on_load(tmp_path):
    SaeConfig(d_in=8, num_latents=16, k=2).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(saved | {"apply_b_dec_to_input": "false"}))
    with pytest.raises(SaeConfigError, match=r"`apply_b_dec_to_input` must be True or False; got 'false'"):
        SaeConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["../victim", "model/layers.1", "model\\layers.1", ".hidden", ""])
def test_a_hookpoint_cannot_be_a_path(name):
    message = rf"SaeConfig `hookpoint` {re.escape(repr(name))} must be a folder name"
    with pytest.raises(hf_sae.HookpointError, match=message):
        SaeConfig(d_in=8, num_latents=16, k=2, hookpoint=name)
    module = "model.layers.1.mlp"  # module paths, with dots and the input suffix, are folder names
    config = SaeConfig(d_in=8, num_latents=16, k=2, hookpoint=f"{module}.input", output_hookpoint=module,
                       apply_b_dec_to_input=False)  # fmt: skip
    assert (config.hookpoint, config.output_hookpoint) == (f"{module}.input", module)
