"""Shared fixtures: tiny random causal LMs of several families, built offline from configs, and seeding."""

from dataclasses import dataclass

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
)

VOCAB_SIZE = 99
# Token ids every tiny model agrees on; all inside the vocabulary so generate() warns about nothing.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPECIAL_IDS = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


@dataclass
class TinyLM:
    """A tiny random causal LM and how its decoder blocks are spelled."""

    family: str
    model: PreTrainedModel
    blocks: list[str]  # hookpoints of the decoder blocks, in execution order
    hidden_size: int


# Odd widths so that a width mix-up cannot pass by accident.
_CONFIGS = {
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=24, intermediate_size=36, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **_SPECIAL_IDS,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=36, n_layer=3, n_head=3, n_positions=64, **_SPECIAL_IDS,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB_SIZE, hidden_size=36, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3,
        rotary_pct=0.5, max_position_embeddings=64, **_SPECIAL_IDS,
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=24, intermediate_size=36, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **_SPECIAL_IDS,
    ),
}  # fmt: skip
_BLOCK_PREFIX = {
    "llama": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "qwen2": "model.layers",
}
FAMILIES = tuple(_CONFIGS)


def make_tiny_lm(family: str, seed: int = 0) -> TinyLM:
    """A seeded random LM of `family` in eval mode (eager attention, so padded batches are exact)."""
    config = _CONFIGS[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    blocks = [f"{_BLOCK_PREFIX[family]}.{i}" for i in range(config.num_hidden_layers)]
    return TinyLM(family, model, blocks, config.hidden_size)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=FAMILIES)
def tiny_lm(request) -> TinyLM:
    """Each tiny LM family in turn."""
    return make_tiny_lm(request.param)


@pytest.fixture
def tiny_llama() -> TinyLM:
    return make_tiny_lm("llama")


@pytest.fixture
def tiny_gpt2() -> TinyLM:
    return make_tiny_lm("gpt2")


@pytest.fixture
def input_ids() -> torch.Tensor:
    """A (2, 7) batch of token ids, BOS first."""
    ids = torch.randint(3, VOCAB_SIZE, (2, 7), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = BOS_ID
    return ids


def save_tiny_llama_and_corpus(root, *, num_words: int, hidden_size: int, intermediate_size: int,
                               num_layers: int, heads: int, kv_heads: int, documents: dict[str, int],
                               words_per_document: tuple[int, int]) -> list[str]:  # fmt: skip
    """Save a tiny Llama with a word-level tokenizer to `root/lm` (loadable by `load_model`) and a jsonl corpus
    with one file per split to `root/text`; returns the vocabulary's words."""
    import json
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(num_words)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    rng = random.Random(0)
    (root / "text").mkdir(exist_ok=True)
    for split, count in documents.items():
        lines = [json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(*words_per_document)))})
                 for _ in range(count)]  # fmt: skip
        (root / "text" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return words
