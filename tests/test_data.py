"""data.py: loading every kind of text source, packing into blocks, sharding and skipping."""

import dataclasses
import json
import random
from itertools import islice

import pytest
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import HfArgumentParser, PreTrainedTokenizerFast

from hf_sae import data
from hf_sae.arguments import DataArguments
from hf_sae.data import (
    check_context_size,
    iter_blocks,
    load_text_dataset,
    load_token_blocks,
    pack_token_ids,
    shard_blocks,
    tokenize_and_pack,
)
from hf_sae.errors import DataError

BOS, EOS = 1, 2
WORDS = [f"w{i}" for i in range(40)]


def word_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word, so expected ids can be computed without the tokenizer."""
    vocab = {"<unk>": 0, "<s>": BOS, "</s>": EOS, **{word: i + 3 for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", **special)


def make_documents(n: int = 30, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) for _ in range(n)]
    docs[3] = ""  # empty documents are skipped, not turned into a lone EOS
    return docs


def expected_blocks(docs: list[str], context_size: int, bos: int | None = BOS) -> list[list[int]]:
    """The packing rule written out independently: stream of doc + EOS, blocks of BOS + (context - 1) tokens."""
    stream = []
    for doc in docs:
        if doc.split():
            stream += [WORDS.index(word) + 3 for word in doc.split()] + [EOS]
    body = context_size - (bos is not None)
    blocks = [stream[i * body : (i + 1) * body] for i in range(len(stream) // body)]
    return [([bos] if bos is not None else []) + block for block in blocks]


def rows(dataset) -> list[list[int]]:
    return [list(row["input_ids"]) for row in dataset]


@pytest.fixture
def docs() -> list[str]:
    return make_documents()


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


# --- packing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bos", [BOS, None])
@pytest.mark.parametrize("context_size", [2, 7, 16])
def test_pack_token_ids_matches_independent_packing(docs, bos, context_size):
    ids = [[WORDS.index(word) + 3 for word in doc.split()] for doc in docs]
    assert pack_token_ids(ids, context_size, bos, EOS) == expected_blocks(docs, context_size, bos)


@pytest.mark.parametrize("streaming", [False, True])
def test_tokenize_and_pack_exact_blocks(docs, tokenizer, streaming):
    dataset = Dataset.from_dict({"text": docs, "other": list(range(len(docs)))})
    if streaming:
        dataset = dataset.to_iterable_dataset()
    blocks = tokenize_and_pack(dataset, tokenizer, 9, batch_size=len(docs))
    got = rows(blocks)
    assert got == expected_blocks(docs, 9)
    assert len(got) >= 20
    assert all(len(block) == 9 and block[0] == BOS for block in got)
    assert all(token != tokenizer.pad_token_id for block in got for token in block[1:] if tokenizer.pad_token_id)
    assert sum(block.count(EOS) for block in got) >= len(got) // 2  # documents are separated by EOS
    assert list(next(iter(blocks))) == ["input_ids"]


def test_tokenize_and_pack_packs_each_batch_separately(docs, tokenizer):
    blocks = rows(tokenize_and_pack(Dataset.from_dict({"text": docs}), tokenizer, 8, batch_size=10))
    expected = [block for start in range(0, len(docs), 10) for block in expected_blocks(docs[start : start + 10], 8)]
    assert blocks == expected


def test_tokenizer_without_bos_gives_plain_slices(docs):
    blocks = rows(tokenize_and_pack(Dataset.from_dict({"text": docs}), word_tokenizer(bos=False), 8, batch_size=100))
    assert blocks == expected_blocks(docs, 8, bos=None)


def test_iter_blocks_yields_long_tensors(docs, tokenizer):
    blocks = tokenize_and_pack(Dataset.from_dict({"text": docs}), tokenizer, 6)
    tensors = list(iter_blocks(blocks))
    assert all(t.dtype == torch.long and t.shape == (6,) for t in tensors)
    assert [t.tolist() for t in tensors] == rows(blocks)


def test_context_size_checks():
    check_context_size(64, 64)
    with pytest.raises(DataError, match="max_position_embeddings"):
        check_context_size(65, 64)
    with pytest.raises(DataError, match=">= 2"):
        check_context_size(1, None)


def test_context_too_long_fails_before_reading(tokenizer, monkeypatch):
    monkeypatch.setattr(data, "load_text_dataset", lambda args: pytest.fail("the dataset was read"))
    with pytest.raises(DataError, match="Expected context_size <= 64"):
        load_token_blocks(DataArguments(context_size=128), tokenizer, max_positions=64)


# --- sources ---------------------------------------------------------------------------------------------------


def write_source(kind: str, folder, docs: list[str]):
    """Write docs in one of the supported formats; returns the path to name as dataset_name."""
    table = {"text": docs, "id": list(range(len(docs)))}
    path = folder / f"docs.{kind}"
    if kind == "txt":
        path.write_text("\n".join(docs) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    elif kind == "json":
        path.write_text(json.dumps([{"text": d, "id": i} for i, d in enumerate(docs)]))
    elif kind == "parquet":
        Dataset.from_dict(table).to_parquet(str(path))
    elif kind == "csv":
        Dataset.from_dict(table).to_csv(str(path), index=False)
    elif kind == "tsv":
        Dataset.from_dict(table).to_csv(str(path), index=False, sep="\t")
    elif kind == "jsonl.gz":
        import gzip

        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    elif kind == "folder":
        path = folder / "corpus"
        path.mkdir()
        (path / "part-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:10]))
        (path / "part-1.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[10:]))
    elif kind == "saved_dict":
        path = folder / "saved_dict"
        DatasetDict(
            {"train": Dataset.from_dict(table), "test": Dataset.from_dict({"text": ["w1"], "id": [0]})}
        ).save_to_disk(str(path))
    elif kind == "saved":
        path = folder / "saved"
        Dataset.from_dict(table).save_to_disk(str(path))
    return path


KINDS = ["txt", "jsonl", "json", "parquet", "csv", "tsv", "jsonl.gz", "folder", "saved_dict", "saved"]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_every_source_kind_loads_the_same_texts(tmp_path, kind, streaming):
    docs = [d for d in make_documents() if d]  # the text builder turns an empty line into an empty row
    path = write_source(kind, tmp_path, docs)
    dataset = load_text_dataset(DataArguments(dataset_name=str(path), streaming=streaming, shuffle_seed=None))
    assert isinstance(dataset, IterableDataset if streaming else Dataset)
    assert [row["text"] for row in dataset] == docs


def test_saved_dataset_dict_picks_the_split(tmp_path):
    path = write_source("saved_dict", tmp_path, ["w1 w2", "w3"])
    assert [r["text"] for r in load_text_dataset(DataArguments(dataset_name=str(path), dataset_split="test"))] == [
        "w1"
    ]
    with pytest.raises(DataError, match=r"split 'validation'.*\['test', 'train'\]"):
        load_text_dataset(DataArguments(dataset_name=str(path), dataset_split="validation"))


def test_missing_text_column_names_the_columns(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "w1", "id": 1}) + "\n")
    for streaming in (False, True):
        with pytest.raises(DataError, match=r"'text'.*\['body', 'id'\].*--text_column"):
            load_text_dataset(DataArguments(dataset_name=str(path), streaming=streaming))


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/file.jsonl", "missing.parquet", "a/b/c"])
def test_nonexistent_path_is_a_clear_error(name):
    with pytest.raises(DataError, match="does not exist"):
        load_text_dataset(DataArguments(dataset_name=name))


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/corpus' on the Hub")

    monkeypatch.setattr(data, "load_dataset", offline)
    with pytest.raises(DataError, match=r"Could not load the Hub dataset 'org/corpus' \(Couldn't reach"):
        load_text_dataset(DataArguments(dataset_name="org/corpus"))


def test_unknown_extension_is_a_clear_error(tmp_path):
    path = tmp_path / "docs.xml"
    path.write_text("<doc/>")
    with pytest.raises(DataError, match=r"Expected a file ending in one of \.txt"):
        load_text_dataset(DataArguments(dataset_name=str(path)))


@pytest.mark.parametrize("streaming", [False, True])
def test_an_integer_text_column_is_named_before_tokenizing(tmp_path, tokenizer, streaming):
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join(json.dumps({"text": i, "body": "w1"}) for i in range(5)) + "\n")
    with pytest.raises(ValueError, match="text input must be of type `str`"):  # what the tokenizer would say
        tokenizer([row["text"] for row in Dataset.from_json(str(path))])
    with pytest.raises(DataError, match=r"The text column 'text' of '.*ids.jsonl' holds int(64)? values, not text. "
                       r"Set --text_column .*\['text', 'body'\]"):  # fmt: skip
        load_text_dataset(DataArguments(dataset_name=str(path), streaming=streaming))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "", r"The dataset file .*empty.txt is empty; expected documents in it"),
        ("empty.jsonl", "", r"empty.jsonl is empty"),
        ("blank.jsonl", "\n\n", r"Could not read documents from .*blank.jsonl \(ValueError: .*no data"),
        ("broken.jsonl", '{"text": "w1"\n', r"Could not read documents from .*broken.jsonl \(ArrowInvalid: JSON"),
        ("broken.csv", '"a\n', r"Could not read documents from .*broken.csv"),
    ],
)
def test_an_empty_or_unparsable_file_is_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        data.check_sources(DataArguments(dataset_name=str(tmp_path / name)))


def test_an_eval_budget_beyond_the_text_warns_with_the_tokens_used(docs, tokenizer, caplog):
    blocks = tokenize_and_pack(Dataset.from_dict({"text": docs}), tokenizer, 8)
    with caplog.at_level("WARNING"):
        input_ids, _ = data.read_blocks(blocks, 10_000)
    assert input_ids.numel() == 8 * len(blocks) < 10_000  # the condition: all of the text is less than asked
    assert (f"--eval_tokens asks for 10,000 tokens, but the held-out text makes only {len(blocks)} blocks "
            f"({input_ids.numel():,} tokens)") in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING"):
        data.read_blocks(blocks, 16)
    assert caplog.text == ""


def test_missing_builtin_corpus_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path))
    with pytest.raises(DataError, match="hf-sae prepare-corpus"):
        load_text_dataset(DataArguments())


def test_builtin_corpus_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path))
    texts = {"train": ["w1 w2", "w3"], "test": ["w4"]}
    DatasetDict({k: Dataset.from_dict({"text": v, "source": ["x"] * len(v)}) for k, v in texts.items()}).save_to_disk(
        str(tmp_path / "corpus" / "default")
    )
    assert [r["text"] for r in load_text_dataset(DataArguments(dataset_split="test"))] == ["w4"]


def test_shuffle_and_max_documents(tmp_path):
    docs = [f"w{i}" for i in range(20)]
    path = write_source("jsonl", tmp_path, docs)
    for streaming in (False, True):
        args = DataArguments(dataset_name=str(path), streaming=streaming, max_documents=5, shuffle_seed=None)
        assert [r["text"] for r in load_text_dataset(args)] == docs[:5]
        args.shuffle_seed = 3
        shuffled = [r["text"] for r in load_text_dataset(args)]
        assert len(shuffled) == 5 and shuffled != docs[:5] and set(shuffled) <= set(docs)
        assert [r["text"] for r in load_text_dataset(args)] == shuffled  # the seed fixes the order


def test_data_arguments_parse_from_the_command_line():
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--dataset_name", "x.jsonl", "--streaming", "--context_size", "128", "--max_documents", "10"]
    )
    assert (args.dataset_name, args.streaming, args.context_size, args.max_documents) == ("x.jsonl", True, 128, 10)
    assert args.shuffle_seed == 0 and args.dataset_split == "train"  # shuffled by default


# --- sharding and resuming -------------------------------------------------------------------------------------


@pytest.fixture
def blocks(docs, tokenizer) -> Dataset:
    packed = tokenize_and_pack(Dataset.from_dict({"text": docs * 3}), tokenizer, 5, batch_size=1000)
    assert len(packed) % 3 != 0  # so that equalising the ranks has something to drop
    return packed


@pytest.mark.parametrize("streaming", [False, True])
def test_shards_are_disjoint_and_cover_the_blocks(blocks, streaming):
    source = blocks.to_iterable_dataset() if streaming else blocks
    everything = rows(blocks)
    world_size = 3
    shards = [rows(shard_blocks(source, rank, world_size)) for rank in range(world_size)]
    positions = [list(range(rank, len(everything), world_size)) for rank in range(world_size)]
    if not streaming:  # map-style ranks get equal counts so that data-parallel ranks stay in step
        positions = [p[: len(everything) // world_size] for p in positions]
        assert len({len(shard) for shard in shards}) == 1
    for shard, expected in zip(shards, positions):
        assert shard == [everything[i] for i in expected]
    covered = sorted(i for p in positions for i in p)
    assert covered == list(range(len(covered))) and len(covered) > len(everything) - world_size


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("rank", "world_size", "skip"), [(0, 1, 0), (0, 1, 4), (1, 2, 3), (2, 3, 2)])
def test_skip_drops_exactly_the_first_blocks_of_the_shard(blocks, streaming, rank, world_size, skip):
    source = blocks.to_iterable_dataset() if streaming else blocks
    full = rows(shard_blocks(source, rank, world_size))
    assert rows(shard_blocks(source, rank, world_size, skip=skip)) == full[skip:]


def test_shard_arguments_are_checked(blocks):
    with pytest.raises(DataError, match="rank < world_size"):
        shard_blocks(blocks, rank=2, world_size=2)
    with pytest.raises(DataError, match="skip >= 0"):
        shard_blocks(blocks, skip=-1)


def test_load_token_blocks_end_to_end(tmp_path, tokenizer):
    docs = [d for d in make_documents(60) if d]
    path = write_source("parquet", tmp_path, docs)
    args = DataArguments(dataset_name=str(path), context_size=8, shuffle_seed=None)
    full = rows(load_token_blocks(args, tokenizer, max_positions=64))
    trained = [d for i, d in enumerate(docs) if i % 50 != 49]  # a single file: every 50th document is held out
    assert full == expected_blocks(trained, 8)
    shard = rows(load_token_blocks(args, tokenizer, rank=1, world_size=2, skip=2))
    assert shard == full[1 : len(full) // 2 * 2 : 2][2:]
    args.streaming = True
    assert rows(load_token_blocks(args, tokenizer, rank=1, world_size=2, skip=2)) == full[1::2][2:]


# --- sources stored one after the other, mixing, and per-source blocks -----------------------------------------


def save_sorted_sources(folder, counts: dict[str, int], words: int = 20) -> str:
    """A saved dataset (train, test) whose train split holds each source's documents in one run, in order; the
    source's words are its own (`a3`... spelled from WORDS ranges) so that a block's tokens name its source."""
    rng = random.Random(0)
    vocab = {source: WORDS[i * 10 : (i + 1) * 10] for i, source in enumerate(counts)}
    train = [(s, " ".join(rng.choices(vocab[s], k=words))) for s, n in counts.items() for _ in range(n)]
    split = lambda rows: {"text": [t for _, t in rows], "source": [s for s, _ in rows]}  # noqa: E731
    DatasetDict({"train": Dataset.from_dict(split(train)), "test": Dataset.from_dict(split(train[::7]))}).save_to_disk(
        str(folder / "sorted")
    )
    return str(folder / "sorted")


def block_source(block: list[int], counts: dict[str, int]) -> str:
    """A block's source from its tokens alone (each source has its own ten words), independent of any column."""
    (source,) = {list(counts)[(token - 3) // 10] for token in block[1:] if token > EOS}
    return source


@pytest.mark.parametrize("streaming", [False, True])
def test_a_budget_smaller_than_the_first_source_sees_every_source(tmp_path, tokenizer, streaming):
    counts = {"first": 200, "second": 200}  # 200 x 21 tokens each: the budget below reads 10% of the text
    path = save_sorted_sources(tmp_path, counts)
    budget = 40  # blocks of 21 tokens: 840 tokens, a fifth of the first source
    for seed in (None, 0):
        args = DataArguments(dataset_name=path, context_size=22, streaming=streaming, shuffle_seed=seed)
        ranks = [list(islice(load_token_blocks(args, tokenizer, rank=r, world_size=2), budget // 2)) for r in (0, 1)]
        seen = [row for rows_ in ranks for row in rows_]
        assert all(block_source(row["input_ids"], counts) == row["source"] for row in seen)  # one source a block
        per_source = {s: sum(row["source"] == s for row in seen) for s in counts}
        if seed is None:
            assert per_source == {"first": budget, "second": 0}  # the stored order: the bias happens
        else:
            assert per_source["first"] >= 10 and per_source["second"] >= 10, per_source


@pytest.mark.parametrize("streaming", [False, True])
def test_the_shuffle_is_exact_under_resume_and_across_ranks(tmp_path, tokenizer, streaming):
    path = save_sorted_sources(tmp_path, {"first": 150, "second": 150})
    args = DataArguments(dataset_name=path, context_size=9, streaming=streaming, stream_shuffle_buffer=1000)
    alone = rows(load_token_blocks(args, tokenizer))
    assert rows(load_token_blocks(args, tokenizer)) == alone  # the seed fixes the order
    for rank in (0, 1):
        shard = rows(load_token_blocks(args, tokenizer, rank=rank, world_size=2))
        assert shard == alone[rank::2][: len(shard)] and len(shard) >= len(alone) // 2
        assert rows(load_token_blocks(args, tokenizer, rank=rank, world_size=2, skip=5)) == shard[5:]
    other = rows(load_token_blocks(dataclasses.replace(args, shuffle_seed=1), tokenizer))
    assert other != alone  # and the seed is what decides it


def test_pack_by_source_gives_every_block_one_source():
    docs = [[3, 4, 5], [10, 11], [6, 7, 8, 9], [12, 13, 14, 15, 16]]
    sources = ["a", "b", "a", "b"]
    blocks, block_sources = data.pack_by_source(docs, sources, 4, BOS, EOS)
    # Written out: a's stream 3 4 5 E 6 7 8 9 E, b's 10 11 E 12 13 14 15 16 E, cut in threes after BOS, as they fill.
    assert blocks == [[BOS, 3, 4, 5], [BOS, 10, 11, EOS], [BOS, EOS, 6, 7], [BOS, 8, 9, EOS], [BOS, 12, 13, 14],
                      [BOS, 15, 16, EOS]]  # fmt: skip
    assert block_sources == ["a", "b", "a", "a", "b", "b"]
    assert pack_token_ids(docs, 4, BOS, EOS) == expected_blocks([" ".join(WORDS[t - 3] for t in d) for d in docs], 4)


def test_several_sources_are_mixed_and_named(tmp_path):
    first = write_source("jsonl", tmp_path, [f"w{i}" for i in range(30)])
    (tmp_path / "b").mkdir()
    second = write_source("parquet", tmp_path / "b", [f"w{i} w{i}" for i in range(10)])
    both = DataArguments(dataset_name=[str(first), str(second)])
    assert both.dataset_names == [str(first), str(second)]
    mixed = load_text_dataset(both)
    assert sorted(mixed["source"]) == sorted([str(first)] * 30 + [str(second)] * 10)  # every document once
    assert mixed["source"][:10] != [str(first)] * 10  # shuffled together, not one after the other
    weighted = load_text_dataset(dataclasses.replace(both, dataset_weights=[1, 3]))
    counts = {name: weighted["source"].count(name) for name in (str(first), str(second))}
    assert counts[str(second)] == 10 and counts[str(first)] < 10  # about 1:3, until the second runs out
    streamed = load_text_dataset(dataclasses.replace(both, dataset_weights=[1, 3], streaming=True))
    assert {row["source"] for row in streamed} == set(counts)
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--dataset_name", "a.jsonl", "b", "--dataset_weights", "0.3", "0.7"]
    )
    assert (args.dataset_name, args.dataset_weights) == (["a.jsonl", "b"], [0.3, 0.7])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset_weights": [1.0, -0.5]}, r"--dataset_weights must be finite numbers >= 0.*\[1.0, -0.5\]"),
        ({"dataset_weights": [0.0, 0.0]}, r"--dataset_weights must be weights with a positive sum.*\[0.0, 0.0\]"),
        ({"dataset_weights": [1.0]}, r"--dataset_weights must be 2 number\(s\), one per --dataset_name"),
        ({"streaming": True}, r"--dataset_weights must be given to mix several streamed sources"),
        ({"stream_shuffle_buffer": 999}, r"--stream_shuffle_buffer must be at least one packing batch.*999"),
    ],
)
def test_bad_mixing_arguments_are_clear_errors(tmp_path, overrides, message):
    from hf_sae.errors import ArgumentError

    first = write_source("jsonl", tmp_path, ["w1", "w2"])
    with pytest.raises(ArgumentError, match=message):  # refused as the arguments are built
        DataArguments(dataset_name=[str(first), str(first)], **overrides)


def test_a_source_without_the_text_column_fails_before_the_lm_loads(tmp_path, monkeypatch):
    from hf_sae import runners
    from hf_sae.arguments import EvaluationArguments, LanguageModelArguments

    good = write_source("jsonl", tmp_path, ["w1", "w2"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "w1"}) + "\n")
    monkeypatch.setattr(runners, "load_saes_and_lm", lambda *a, **k: pytest.fail("the LM was loaded"))
    args = DataArguments(dataset_name=[str(good), str(bad)], dataset_split="train")
    with pytest.raises(DataError, match=rf"'text' in dataset '{bad}'.*\['body'\].*--text_column"):
        runners.run_evaluation(LanguageModelArguments(), args, EvaluationArguments(sae="x", output_dir="y"))


@pytest.mark.parametrize("streaming", [False, True])
def test_a_single_file_holds_out_every_50th_document_which_training_never_reads(tmp_path, streaming):
    documents = [f"document {i} " + "w1 " * 5 for i in range(200)]
    path = tmp_path / "one.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in documents) + "\n")
    args = DataArguments(dataset_name=str(path), shuffle_seed=None, streaming=streaming)
    train = [row["text"] for row in load_text_dataset(args)]
    test = [row["text"] for row in load_text_dataset(dataclasses.replace(args, dataset_split="test"))]
    assert test == [documents[i] for i in range(49, 200, 50)]  # 4 of 200: 2%
    assert not set(train) & set(test) and len(train) + len(test) == 200
    assert data.split_label(str(path), dataclasses.replace(args, dataset_split="test")) == "train[every 50th document]"


def test_a_source_with_its_own_test_split_is_not_carved(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    for split, count in (("train", 100), ("test", 10)):
        lines = [json.dumps({"text": f"{split} {i}"}) for i in range(count)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    args = DataArguments(dataset_name=str(folder), shuffle_seed=None)
    assert len(load_text_dataset(args)) == 100
    assert [r["text"] for r in load_text_dataset(dataclasses.replace(args, dataset_split="test"))][:2] == [
        "test 0",
        "test 1",
    ]
    assert data.split_label(str(folder), dataclasses.replace(args, dataset_split="test")) == "test"
