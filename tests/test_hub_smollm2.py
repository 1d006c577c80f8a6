"""End to end on the real SmolLM2: an SAE run folder pushed to the Hub-protocol test server, pulled into a fresh cache,
attached with SaeHooks, and used to steer `generate()`; the model card carries the metrics.

By default the SAE is a random one of the right shape with a small metrics file, so the test runs anywhere the model
is installed. Set `HF_SAE_ROUND_TRIP_RUN` to a training output folder (e.g. the default run's) to send that instead.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from hub_server import HubServer, point_client_at
from huggingface_hub import HfApi, ModelCard

from hf_sae import MissingDependencyError, SaeConfig, SaeHooks, SaeModel, load_saes, push_saes_to_hub

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]
TOKEN = "hf_alice_write"
HOOKPOINT = "model.layers.15"


@pytest.fixture(scope="module")
def smollm2():
    models = pytest.importorskip("hf_sae.models")
    try:
        return models.load_model()
    except MissingDependencyError as error:
        pytest.skip(f"the built-in SmolLM2 is not installed: {error}")


def random_run(folder: Path) -> Path:
    torch.manual_seed(0)
    config = SaeConfig(d_in=576, expansion_factor=4, architecture="topk", k=16, hookpoint=HOOKPOINT,
                       base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")  # fmt: skip
    SaeModel(config).save_pretrained(folder / HOOKPOINT)
    metrics = {HOOKPOINT: {"fvu": 0.25, "l0": 16.0, "dead_fraction": 0.02, "train_tokens": 1000}}
    (folder / "metrics.json").write_text(json.dumps(metrics))  # the run's report, as training writes it
    (folder / HOOKPOINT / "metrics.json").write_text(json.dumps(metrics[HOOKPOINT]))  # and beside the SAE
    return folder


def test_a_smollm2_sae_round_trips_through_the_hub_and_steers_generate(smollm2, tmp_path, monkeypatch):
    model, tokenizer = smollm2
    run = Path(os.environ.get("HF_SAE_ROUND_TRIP_RUN") or random_run(tmp_path / "run"))
    with HubServer() as hub:
        point_client_at(monkeypatch, hub.url, tmp_path / "hf-home")
        HfApi(token=TOKEN).create_repo("alice/smollm2-saes")
        push_saes_to_hub("alice/smollm2-saes", run, token=TOKEN)
        point_client_at(monkeypatch, hub.url, tmp_path / "fresh-cache")  # pull into an empty cache
        saes = load_saes("alice/smollm2-saes", hookpoints=[HOOKPOINT], token=TOKEN)
        card = ModelCard.load("alice/smollm2-saes", token=TOKEN)

    local = SaeModel.from_pretrained(run / HOOKPOINT)
    assert torch.equal(saes[HOOKPOINT].W_dec, local.W_dec)
    assert card.data.library_name == "hf_sae"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    expected = json.loads((run / "metrics.json").read_text())[HOOKPOINT]
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["fvu"] == pytest.approx(expected["fvu"])
    fvu_cell = f"{expected['fvu']:.4g}"
    assert re.search(rf"\| `{re.escape(HOOKPOINT)}` \| {re.escape(fvu_cell)}\d* \|", card.text)  # the metrics table

    prompt = tokenizer(["The capital of France is"], return_tensors="pt")
    generate = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    plain = model.generate(**prompt, **generate)
    hooks = SaeHooks(model, saes)
    with torch.no_grad():
        latents = hooks.saes[HOOKPOINT].encode(
            model(**prompt, output_hidden_states=True).hidden_states[16][0, 1:].float()
        )
    feature = int(latents.amax(0).argmax())
    with hooks.steer({feature: 4 * float(latents.max())}, mode="clamp"):
        steered = model.generate(**prompt, **generate)
    assert not torch.equal(plain, steered)
    assert model.generate(**prompt, **generate).equal(plain)  # the hooks are gone again
