"""Where a name points: an existing local path, or a Hub id. One rule for SAEs, models and datasets alike.

A name spelled as a path (`./x`, `/x`, `~/x`, `a\\b`, `a/b/c`, or ending in a file suffix such as `.gguf` or
`.jsonl`) that does not exist is a mistyped path: it is refused here and never sent to the Hub as a repo id.
"""

import re
from pathlib import Path

from .errors import HfSaeError

# Suffixes of the files hf_sae reads by path (models, datasets, SAE weights), optionally compressed.
FILE_SUFFIXES = (".gguf", ".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".safetensors", ".npz", ".pt")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")  # `name` or `org/name`


def spelled_as_path(name: str) -> bool:
    """Whether `name` is written as a file system path rather than a Hub id (`org/name`)."""
    name = str(name)
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    has_file_suffix = bool(suffixes) and suffixes[-1] in FILE_SUFFIXES
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or has_file_suffix


def is_hub_id(name: str) -> bool:
    """Whether `name` can name a Hub repo (`name` or `org/name`)."""
    return not spelled_as_path(name) and bool(HUB_ID.match(str(name)))


def local_path(name, what: str, error: type[HfSaeError]) -> Path | None:
    """The existing local path `name` names (`~` expanded), or None when it is to be looked up on the Hub; a name
    spelled as a path that does not exist is refused with `error`, naming the deepest part of it that exists."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if spelled_as_path(str(name)):
        raise missing_path_error(str(name), what, error)
    return None


def missing_path_error(name: str, what: str, error: type[HfSaeError]) -> HfSaeError:
    path = Path(name).expanduser().resolve()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    return error(
        f"{what} {name!r} does not exist locally (it is spelled as a local path, so it was not looked up on the "
        f"Hub; the deepest part that exists is {existing}). Check the path."
    )
