"""`SaeConfig`: what a sparse autoencoder is. Never training schedules, devices or run-time dtypes."""

import math
from typing import Any

from transformers import PreTrainedConfig
from transformers.utils import logging

from .architectures import ARCHITECTURES, ArchitectureName
from .errors import SaeConfigError
from .layout import hookpoint_folder
from .version import __version__

logger = logging.get_logger(__name__)

# Architectures whose sparsity is set by `k` rather than by a penalty coefficient.
K_ARCHITECTURES = tuple(name for name, arch in ARCHITECTURES.items() if arch.uses_k)

# Keys that `PreTrainedConfig` itself writes into config.json; anything else we don't know is from a newer hf_sae.
_BASE_CONFIG_KEYS = {
    "transformers_version",
    "model_type",
    "architectures",
    "_name_or_path",
    "name_or_path",
    "dtype",
    "torch_dtype",
    "_commit_hash",
    "attn_implementation",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
}


class SaeConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SaeModel`]: its widths, its sparsity mechanism and where in which language model it reads.

    Args:
        d_in (`int`):
            Width of the activation the SAE reads and reconstructs (the hooked module's output width).
        num_latents (`int`, *optional*):
            Number of latents (features). Give this or `expansion_factor`.
        expansion_factor (`float`, *optional*):
            Convenience for `num_latents = round(expansion_factor * d_in)`; resolved at construction and not stored.
        architecture (`str`, *optional*, defaults to `"topk"`):
            A name in `hf_sae.ARCHITECTURES`: `relu`, `topk`, `batchtopk`, `matryoshka_batchtopk`, `jumprelu`, `gated`.
        k (`int`, *optional*):
            Active latents per token for `topk`, average active latents per token for the BatchTopK family.
        matryoshka_group_sizes (`list[int]`, *optional*):
            `matryoshka_batchtopk` only: the sizes of the dictionary's consecutive latent groups, summing to
            `num_latents`; each prefix (the first group, the first two, ...) is trained to reconstruct on its own.
        sparsity_coefficient (`float`, *optional*, defaults to 1.0):
            Weight of the sparsity penalty: L1 for `relu` and `gated`, L0 for `jumprelu`. Unused by the k family.
        jumprelu_init_threshold (`float`, *optional*, defaults to 0.001):
            Initial JumpReLU threshold of every latent.
        jumprelu_bandwidth (`float`, *optional*, defaults to 0.001):
            Width of the rectangle kernel used for JumpReLU's straight-through pseudo-gradients.
        auxk_coefficient (`float`, *optional*, defaults to 1/32):
            Weight of the AuxK loss that revives dead latents (k family).
        apply_b_dec_to_input (`bool`, *optional*, defaults to `True`):
            Whether the encoder sees `x - b_dec` rather than `x`.
        hookpoint (`str`, *optional*):
            Module path of the activation in the language model, as `named_modules()` spells it.
        output_hookpoint (`str`, *optional*):
            Makes the SAE a transcoder (Dunefsky, Chlenski and Nanda 2024, arXiv 2406.11944): it reads `hookpoint`
            and predicts the activation here instead of reconstructing its input, typically an MLP's input
            (`model.layers.3.mlp.input`) and output (`model.layers.3.mlp`).
        d_out (`int`, *optional*):
            Width of the predicted activation; a transcoder's output width, `d_in` otherwise (the default).
        skip_connection (`bool`, *optional*, defaults to `False`):
            A skip transcoder (Paulo, Shabalin and Belrose 2025, arXiv 2501.18823): the prediction adds a learned
            linear term `x @ W_skip.T`. Only for transcoders.
        base_model_name_or_path (`str`, *optional*):
            The language model the SAE was trained on.
        hf_sae_version (`str`, *optional*):
            hf_sae version that saved this config; stamped on save.

    Example:

    ```python
    >>> from hf_sae import SaeConfig
    >>> config = SaeConfig(d_in=576, expansion_factor=16, architecture="topk", k=32, hookpoint="model.layers.15")
    >>> config.num_latents
    9216
    ```
    """

    model_type = "hf_sae"
    # Fields without defaults (d_in) make `SaeConfig()` invalid, so transformers must not build a default one.
    has_no_defaults_at_init = True

    d_in: int
    num_latents: int | None = None
    architecture: ArchitectureName = "topk"
    k: int | None = None
    matryoshka_group_sizes: list[int] | None = None
    sparsity_coefficient: float = 1.0
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001
    auxk_coefficient: float = 1 / 32
    apply_b_dec_to_input: bool = True
    hookpoint: str | None = None
    output_hookpoint: str | None = None
    d_out: int | None = None
    skip_connection: bool = False
    base_model_name_or_path: str | None = None
    hf_sae_version: str | None = None

    def __post_init__(self, **kwargs: Any):
        expansion_factor = kwargs.pop("expansion_factor", None)
        unknown = sorted(key for key in kwargs if key not in _BASE_CONFIG_KEYS)
        if unknown:
            logger.warning(
                f"SaeConfig ignores unknown keys {unknown}: they were probably written by a newer hf_sae "
                f"(this config says version {self.hf_sae_version}). Upgrade hf_sae to use them."
            )
            for key in unknown:
                kwargs.pop(key)
        self._resolve_num_latents(expansion_factor)
        self._validate()
        self._validate_transcoder()
        super().__post_init__(**kwargs)
        self._frozen = True

    def _resolve_num_latents(self, expansion_factor: float | None) -> None:
        _check_positive_int("d_in", self.d_in)
        if expansion_factor is None:
            if self.num_latents is None:
                raise SaeConfigError(
                    "SaeConfig needs `num_latents` or `expansion_factor`, got neither. "
                    "Pass e.g. `num_latents=9216` or `expansion_factor=16`."
                )
            return
        if not _is_number(expansion_factor) or expansion_factor <= 0:
            raise SaeConfigError(f"`expansion_factor` must be a positive number, got {expansion_factor!r}.")
        resolved = round(expansion_factor * self.d_in)
        if self.num_latents is not None and self.num_latents != resolved:
            raise SaeConfigError(
                f"`num_latents={self.num_latents}` disagrees with `expansion_factor={expansion_factor}` "
                f"(which gives {resolved} for d_in={self.d_in}). Pass only one of them."
            )
        self.num_latents = resolved

    def _validate(self) -> None:
        _check_positive_int("num_latents", self.num_latents)
        self._validate_types()
        if self.architecture not in ARCHITECTURES:
            raise SaeConfigError(
                f"`architecture` must be one of {', '.join(ARCHITECTURES)}; got {self.architecture!r}."
            )
        if self.architecture in K_ARCHITECTURES:
            if self.k is None:
                raise SaeConfigError(
                    f"architecture {self.architecture!r} needs `k`, the number of active latents per token; "
                    "got k=None. Pass e.g. `k=32`."
                )
            _check_positive_int("k", self.k)
            if self.k >= self.num_latents:
                raise SaeConfigError(
                    f"`k` must be smaller than `num_latents` ({self.num_latents}); got k={self.k}. "
                    "Lower k or widen the SAE."
                )
        elif self.k is not None:
            raise SaeConfigError(
                f"`k` applies only to {', '.join(K_ARCHITECTURES)}; got k={self.k} with architecture "
                f"{self.architecture!r}. Drop `k` or change the architecture."
            )
        self._validate_group_sizes()
        for name in ("sparsity_coefficient", "auxk_coefficient"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise SaeConfigError(f"`{name}` must be a number >= 0; got {value!r}.")
        for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise SaeConfigError(f"`{name}` must be a number > 0; got {value!r}.")

    def _validate_types(self) -> None:
        """Flags are booleans and names are strings: `"no"` would be a truthy flag, and a hookpoint names a folder."""
        for name in ("apply_b_dec_to_input", "skip_connection"):
            if not isinstance(value := getattr(self, name), bool):
                raise SaeConfigError(f"`{name}` must be True or False; got {value!r} ({type(value).__name__}).")
        for name in ("architecture", "hookpoint", "output_hookpoint", "base_model_name_or_path", "hf_sae_version"):
            value = getattr(self, name)
            if not isinstance(value, str) and (value is not None or name == "architecture"):
                raise SaeConfigError(f"`{name}` must be a string; got {value!r} ({type(value).__name__}).")
        for name in ("hookpoint", "output_hookpoint"):
            if getattr(self, name) is not None:  # SAEs are saved in a folder named after their hookpoint
                hookpoint_folder(getattr(self, name), f"SaeConfig `{name}`")

    def _validate_group_sizes(self) -> None:
        sizes = self.matryoshka_group_sizes
        if self.architecture != "matryoshka_batchtopk":
            if sizes is not None:
                raise SaeConfigError(
                    f"`matryoshka_group_sizes` applies only to matryoshka_batchtopk; got {sizes!r} with architecture "
                    f"{self.architecture!r}. Drop it or use architecture='matryoshka_batchtopk'."
                )
            return
        example = f"e.g. [{self.num_latents // 4}, {self.num_latents - self.num_latents // 4}]"
        if (
            not isinstance(sizes, list | tuple)
            or not sizes
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
        ):
            raise SaeConfigError(
                f"matryoshka_batchtopk needs `matryoshka_group_sizes`, a list of positive integers (the sizes of the "
                f"nested latent groups); got {sizes!r}. Pass {example}."
            )
        if sum(sizes) != self.num_latents:
            raise SaeConfigError(
                f"`matryoshka_group_sizes` {list(sizes)} sum to {sum(sizes)}, but the groups must cover the "
                f"dictionary: num_latents={self.num_latents}. Change the sizes to sum to {self.num_latents}, "
                f"{example}."
            )
        self.matryoshka_group_sizes = list(sizes)

    @property
    def is_transcoder(self) -> bool:
        """Whether the SAE predicts another activation (`output_hookpoint`) rather than reconstructing its input."""
        return self.output_hookpoint is not None

    def _validate_transcoder(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        _check_positive_int("d_out", self.d_out)
        if not self.is_transcoder:
            for name, value, default in (
                ("d_out", self.d_out, self.d_in),
                ("skip_connection", self.skip_connection, 0),
            ):
                if value != default:
                    raise SaeConfigError(
                        f"`{name}={value!r}` applies only to a transcoder, which predicts another activation; this "
                        f"config reconstructs its input (output_hookpoint=None). Set `output_hookpoint` to the "
                        f"activation to predict, or drop `{name}`."
                    )
            return
        if self.output_hookpoint == self.hookpoint:
            raise SaeConfigError(
                f"`output_hookpoint` equals `hookpoint` ({self.hookpoint!r}): a transcoder predicting what it reads "
                "is an SAE. Drop `output_hookpoint`, or name the activation to predict (e.g. an MLP's output for its "
                "`.input`)."
            )
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise SaeConfigError(
                f"`apply_b_dec_to_input=True` subtracts b_dec (width d_out={self.d_out}) from the input (width "
                f"d_in={self.d_in}); a transcoder's b_dec is its output's bias. Pass `apply_b_dec_to_input=False`."
            )

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of an SAE of this config, by name, with its shape: what its weights file must hold."""
        n, d_in, d_out = self.num_latents, self.d_in, self.d_out
        shapes = {"W_enc": (n, d_in), "W_dec": (n, d_out), "b_dec": (d_out,), "b_enc": (n,)}
        if self.skip_connection:
            shapes["W_skip"] = (d_out, d_in)  # the skip transcoder's linear term
        for extra in ARCHITECTURES[self.architecture].extra_tensors:
            shapes[extra.name] = (n,) if extra.per_latent else ()
        return shapes

    def __setattr__(self, key: str, value: Any) -> None:
        # Configs are immutable once built: an SAE's shape and sparsity rule are fixed by its weights.
        if key in _FROZEN_FIELDS and self.__dict__.get("_frozen", False):
            raise SaeConfigError(
                f"SaeConfig is immutable; cannot set `{key}` to {value!r}. Build a new config instead, e.g. "
                f"`SaeConfig(**{{**config.to_dict(), '{key}': ...}})`."
            )
        super().__setattr__(key, value)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_frozen", None)
        output["hf_sae_version"] = __version__
        return output


# Every field but the version stamp: what an SAE is cannot change under its weights.
_FROZEN_FIELDS = set(SaeConfig.__annotations__) - {"hf_sae_version"}


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SaeConfigError(f"`{name}` must be a positive integer; got {value!r}.")


def _is_number(value: Any) -> bool:
    """A finite int or float (NaN and infinity would train or load silently into nonsense)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
