"""`CltConfig`: what a cross-layer transcoder is (Ameisen et al. 2025, "Circuit Tracing"; Lindsey et al. 2024 on
crosscoders). Never training schedules, devices or run-time dtypes."""

import math
from typing import Any

from transformers import PreTrainedConfig

from .errors import SaeConfigError
from .hookpoints import INPUT_SUFFIX
from .version import __version__

CLT_ARCHITECTURES = ("jumprelu", "topk", "batchtopk")


class CltConfig(PreTrainedConfig):
    r"""
    Configuration of a [`CltModel`]: `n_layers` encoders, one per layer, each reading that layer's MLP input; the
    latents of layer l decode into the MLP output of every layer l' >= l.

    Args:
        n_layers (`int`): layers the transcoder replaces, the model's first `n_layers` unless `hookpoints` says.
        d_in (`int`): width of each MLP input.
        d_out (`int`, *optional*): width of each MLP output; `d_in` by default.
        num_latents (`int`, *optional*): latents per layer; give this or `expansion_factor`.
        expansion_factor (`float`, *optional*): `num_latents = round(expansion_factor * d_in)`, resolved here.
        architecture (`str`, defaults to `"jumprelu"`): `jumprelu`, `topk` or `batchtopk`.
        k (`int`, *optional*): active latents per token and layer (topk), on average (batchtopk).
        sparsity_coefficient (`float`, defaults to 1e-3): JumpReLU's penalty λ Σ tanh(c · z · ‖W_dec‖), the norm
            taken over every layer the latent writes to (Ameisen et al. 2025).
        sparsity_scale (`float`, defaults to 1.0): the c inside that tanh.
        pre_act_coefficient (`float`, defaults to 0.0): JumpReLU's pre-activation penalty Σ relu(θ - pre) · ‖W_dec‖,
            which pulls dead latents towards their threshold (Ameisen et al. 2025).
        jumprelu_init_threshold, jumprelu_bandwidth (`float`, defaults to 0.001): as for [`SaeConfig`].
        hookpoints (`list[str]`, *optional*): the module path each encoder reads, per layer; by default
            `model.layers.{l}.mlp.input`.
        output_hookpoints (`list[str]`, *optional*): the module path each layer's prediction replaces; by default
            `model.layers.{l}.mlp`.
        base_model_name_or_path (`str`, *optional*): the language model it was trained on.
    """

    model_type = "hf_sae_clt"

    def __init__(
        self,
        n_layers: int = 1,
        d_in: int = 1,
        d_out: int | None = None,
        num_latents: int | None = None,
        expansion_factor: float | None = None,
        architecture: str = "jumprelu",
        k: int | None = None,
        sparsity_coefficient: float = 1e-3,
        sparsity_scale: float = 1.0,
        pre_act_coefficient: float = 0.0,
        jumprelu_init_threshold: float = 0.001,
        jumprelu_bandwidth: float = 0.001,
        hookpoints: list[str] | None = None,
        output_hookpoints: list[str] | None = None,
        base_model_name_or_path: str | None = None,
        hf_sae_version: str = __version__,
        **kwargs: Any,
    ):
        self.n_layers, self.d_in = n_layers, d_in
        self.d_out = d_in if d_out is None else d_out
        if num_latents is None and expansion_factor is not None and _is_number(expansion_factor):
            num_latents = round(expansion_factor * d_in)
        self.num_latents = num_latents
        self.architecture, self.k = architecture, k
        self.sparsity_coefficient, self.sparsity_scale = sparsity_coefficient, sparsity_scale
        self.pre_act_coefficient = pre_act_coefficient
        self.jumprelu_init_threshold, self.jumprelu_bandwidth = jumprelu_init_threshold, jumprelu_bandwidth
        self.hookpoints = list(hookpoints) if hookpoints is not None else _default_sites(n_layers, INPUT_SUFFIX)
        outputs = output_hookpoints
        self.output_hookpoints = list(outputs) if outputs is not None else _default_sites(n_layers, "")
        self.base_model_name_or_path = base_model_name_or_path
        self.hf_sae_version = hf_sae_version
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        for name in ("n_layers", "d_in", "d_out", "num_latents"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                hint = " (or `expansion_factor`)" if name == "num_latents" else ""
                raise SaeConfigError(f"`{name}`{hint} must be a positive integer; got {value!r}.")
        if self.architecture not in CLT_ARCHITECTURES:
            raise SaeConfigError(
                f"`architecture` of a cross-layer transcoder must be one of {list(CLT_ARCHITECTURES)}; got "
                f"{self.architecture!r}."
            )
        if self.uses_k and not (isinstance(self.k, int) and 1 <= self.k <= self.num_latents):
            raise SaeConfigError(
                f"`k` must be an integer in [1, num_latents={self.num_latents}] for {self.architecture}; got "
                f"{self.k!r}."
            )
        for name in ("sparsity_coefficient", "sparsity_scale", "pre_act_coefficient", "jumprelu_bandwidth"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise SaeConfigError(f"`{name}` must be a finite number >= 0; got {value!r}.")
        for name in ("hookpoints", "output_hookpoints"):
            sites = getattr(self, name)
            if len(sites) != self.n_layers or not all(isinstance(site, str) and site for site in sites):
                raise SaeConfigError(f"`{name}` must name one module path per layer ({self.n_layers}); got {sites!r}.")

    @property
    def uses_k(self) -> bool:
        return self.architecture in ("topk", "batchtopk")

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor, by name, with its shape. `W_dec.{l}` holds the decoders of layer l's latents into layers
        l..n_layers-1, so the decoders grow with the square of the layer count."""
        n, L = self.num_latents, self.n_layers  # noqa: N806
        shapes = {"W_enc": (L, n, self.d_in), "b_enc": (L, n), "b_dec": (L, self.d_out)}
        shapes |= {f"W_dec.{layer}": (n, L - layer, self.d_out) for layer in range(L)}
        if self.architecture == "jumprelu":
            shapes["threshold"] = (L, n)
        elif self.architecture == "batchtopk":
            shapes["threshold"] = (L,)  # the inference threshold of each layer, learned during training
        return shapes

    def layer_indices(self) -> list[int | str]:
        """The LM layer of each spanned layer, as its output hookpoint numbers it (`model.layers.3.mlp`: 3; the path
        itself where it has no number)."""
        numbers = [[part for part in site.split(".") if part.isdigit()] for site in self.output_hookpoints]
        return [int(found[-1]) if found else site for found, site in zip(numbers, self.output_hookpoints)]

    def num_weights(self) -> int:
        return sum(math.prod(shape) for shape in self.tensor_shapes().values())


def _default_sites(n_layers: int, suffix: str) -> list[str]:
    return [f"model.layers.{layer}.mlp{suffix}" for layer in range(n_layers)] if isinstance(n_layers, int) else []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
