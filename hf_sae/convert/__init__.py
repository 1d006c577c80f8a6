"""hf_sae's SAEs out to other projects' formats: SAELens (which SAEDashboard, SAEBench and Neuronpedia read),
sparsify and hf_sae's own, and an SAE's feature metadata to Neuronpedia's upload (`neuronpedia`). The way in, from
any format, is `SaeModel.from_pretrained` and `load_saes` (`hf_sae.formats` detects and reads); `hf-sae convert` joins
the two (`runners.run_convert`).
"""

import os
from pathlib import Path

from ..errors import ArgumentError
from ..formats import FORMATS, detect_format, releases
from ..modeling_sae import SaeModel
from .neuronpedia import to_neuronpedia
from .writers import WRITERS, sparsify_folder_name

EXPORTERS = WRITERS | {"neuronpedia": to_neuronpedia}
EXPORT_FORMATS = tuple(EXPORTERS)


def export_sae(sae: SaeModel, folder: str | os.PathLike, to: str) -> Path:
    """Write `sae` to `folder` in format `to` (`saelens`, `sparsify`, `hf_sae`, or `neuronpedia`: its feature
    metadata as Neuronpedia's upload takes it); the folder is replaced."""
    if to not in EXPORTERS:
        raise ArgumentError(f"`to` must be one of {list(EXPORTERS)}; got {to!r}.")
    return EXPORTERS[to](sae, Path(folder))


__all__ = [
    "EXPORT_FORMATS", "FORMATS", "detect_format", "export_sae", "releases", "sparsify_folder_name", "to_neuronpedia",
]  # fmt: skip
