"""hf_sae's SAEs out to other projects' formats: SAELens (which SAEDashboard, SAEBench and Neuronpedia read),
sparsify and hf_sae's own, and an SAE's feature metadata to Neuronpedia's upload (`neuronpedia`). The way in, from
any format, is `SaeModel.from_pretrained` and `load_saes` (`hf_sae.formats` detects and reads); `hf-sae convert` joins
the two (`runners.run_convert`).
"""

import copy
import os
from pathlib import Path

from ..architectures import fold_decoder_norm_
from ..errors import ArgumentError
from ..formats import FORMATS, detect_format, releases
from ..modeling_sae import SaeModel
from .neuronpedia import to_neuronpedia
from .writers import WRITERS, sparsify_folder_name

EXPORTERS = WRITERS | {"neuronpedia": to_neuronpedia}
EXPORT_FORMATS = tuple(EXPORTERS)


def export_sae(sae: SaeModel, folder: str | os.PathLike, to: str, *, unit_norm_decoder: bool = False) -> Path:
    """Write `sae` to `folder` in format `to` (`saelens`, `sparsify`, `hf_sae`, or `neuronpedia`: its feature
    metadata as Neuronpedia's upload takes it); the folder is replaced. With `unit_norm_decoder`, a copy whose decoder
    rows have unit norm (`fold_decoder_norm_`) is written: the same reconstructions, each latent scaled by its row's
    norm; `sae` itself is left as it is."""
    if to not in EXPORTERS:
        raise ArgumentError(f"`to` must be one of {list(EXPORTERS)}; got {to!r}.")
    if unit_norm_decoder and to == "neuronpedia":
        raise ArgumentError(
            "`unit_norm_decoder` rescales the latents, so the feature metadata's activations would no longer be the "
            "SAE's; export the SAE with it to `saelens` or `hf_sae` and compute its features there."
        )
    if unit_norm_decoder:
        sae = copy.deepcopy(sae)
        fold_decoder_norm_(sae)
    return EXPORTERS[to](sae, Path(folder))


__all__ = [
    "EXPORT_FORMATS", "FORMATS", "detect_format", "export_sae", "releases", "sparsify_folder_name", "to_neuronpedia",
]  # fmt: skip
