"""The budgets a run fixes before it starts: here, how much text `hf-sae features` reads by default."""

import json
import logging

import pytest

from hf_sae.arguments import FeatureArguments
from hf_sae.budgets import feature_budget
from hf_sae.cli import main
from hf_sae.errors import ArgumentError


@pytest.mark.parametrize(
    "recorded, expected",
    [(5_000, 20_000), (64_000, 64_000), (1_000_000, 200_000), (None, 200_000)],
)
def test_features_read_what_the_sae_trained_on_within_bounds_and_say_so(tmp_path, caplog, recorded, expected):
    if recorded is not None:
        (tmp_path / "metrics.json").write_text(json.dumps({"train_tokens": recorded, "fvu": 0.2}))
    with caplog.at_level(logging.INFO, logger="hf_sae"):
        resolved = feature_budget(FeatureArguments(sae=str(tmp_path)))
    assert resolved.max_tokens == expected
    said = f"no training budget recorded in {tmp_path / 'metrics.json'}" if recorded is None else (
        f"the SAE trained on {recorded:,}; at least 20k, at most 200k")  # fmt: skip
    assert f"Describing features over {expected:,} tokens ({said}); --max_tokens sets it." in caplog.text


def test_an_explicit_feature_budget_is_kept_and_nothing_is_said(tmp_path, caplog):
    (tmp_path / "metrics.json").write_text(json.dumps({"train_tokens": 5_000}))
    with caplog.at_level(logging.INFO, logger="hf_sae"):
        assert feature_budget(FeatureArguments(sae=str(tmp_path), max_tokens=300)).max_tokens == 300
    assert "Describing features" not in caplog.text


def test_a_feature_budget_below_one_token_is_refused_by_name(tmp_path):
    with pytest.raises(ArgumentError, match=r"--max_tokens must be a positive integer; got 0\."):
        FeatureArguments(sae=str(tmp_path), max_tokens=0).check()
    assert main(["features", "--sae", str(tmp_path), "--max_tokens", "-5"]) == 1
