"""hf_sae's SAEs out to other projects' formats: SAELens (which SAEDashboard, SAEBench and Neuronpedia read),
sparsify and hf_sae's own. The way in, from any format, is `SaeModel.from_pretrained` and `load_saes`
(`hf_sae.formats` detects and reads); `hf-sae convert` joins the two (`runners.run_convert`).
"""

import os
from pathlib import Path

from ..errors import ArgumentError
from ..formats import FORMATS, detect_format, releases
from ..modeling_sae import SaeModel
from .writers import WRITERS, sparsify_folder_name

EXPORT_FORMATS = tuple(WRITERS)


def export_sae(sae: SaeModel, folder: str | os.PathLike, to: str) -> Path:
    """Write `sae` to `folder` in format `to` (`saelens`, `sparsify` or `hf_sae`); the folder is replaced."""
    if to not in WRITERS:
        raise ArgumentError(f"`to` must be one of {list(WRITERS)}; got {to!r}.")
    return WRITERS[to](sae, Path(folder))


__all__ = ["EXPORT_FORMATS", "FORMATS", "detect_format", "export_sae", "releases", "sparsify_folder_name"]
