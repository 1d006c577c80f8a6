"""What `SaeTrainer` asks of each model it trains, so that one loop trains SAEs, transcoders and cross-layer
transcoders: its input and target from a batch of `{hookpoint: (tokens, d)}` activations, its call, its metrics, the
record a checkpoint compares, and a copy with the training scales folded in.

    SaeTrainee   an SAE or transcoder (`SaeModel`): one hookpoint in, `(tokens, d_in)`; one scale
    CltTrainee   a cross-layer transcoder (`CltModel`): every layer's MLP input stacked on the second-to-last axis,
                 `(tokens, n_layers, d_in)`, the MLP outputs likewise; one scale per layer
    trainee      the trainee of a model

Scales are the factors that bring each activation to mean norm sqrt(d): a float for an SAE, a list of floats (one per
layer) for a CLT; `scaled` applies either.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from .configuration_sae import SaeConfig
from .modeling_clt import CltModel
from .modeling_sae import SaeModel

Scale = float | list[float]


def scaled(x: Tensor, scale: Scale, device: torch.device) -> Tensor:
    """`x` in fp32 on `device`, times its scale (one per layer on the second-to-last axis where `scale` is a list)."""
    if device.type == "cuda" and x.device.type == "cpu":  # e.g. replayed from the cache
        x = x.pin_memory()
    x = x.to(device, torch.float32, non_blocking=True)
    if isinstance(scale, int | float):  # an SAE's one scale: no tensor built and copied to the device every step
        return x * scale
    return x * torch.tensor(scale, dtype=x.dtype, device=device).unsqueeze(-1)


def scale_from_norms(mean_norms: Tensor, width: int) -> Scale:
    """The scale(s) bringing activations whose mean norm is `mean_norms` (one, or one per layer) to sqrt(width)."""
    return (width**0.5 / mean_norms.double()).tolist()


class SaeTrainee:
    """An SAE or transcoder as the trainer sees it."""

    def __init__(self, model: SaeModel):
        self.model = model

    def describe(self) -> str:
        return f"hookpoint {self.model.config.hookpoint!r}"

    def inputs(self, batch: dict[str, Tensor]) -> Tensor:
        return batch[self.model.config.hookpoint]  # (tokens, d_in)

    def targets(self, batch: dict[str, Tensor]) -> Tensor | None:
        """A transcoder's target, `(tokens, d_out)`; None for an SAE, whose target is its input."""
        cfg = self.model.config
        return batch[cfg.output_hookpoint] if cfg.is_transcoder else None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.model.config.num_latents,)

    def forward(self, wrapped, x: Tensor, target: Tensor | None, dead: Tensor, coefficient: float):
        return wrapped(x, target, dead_latents=dead, return_latents=False, return_loss=True,
                       sparsity_coefficient=coefficient)  # fmt: skip

    def metrics(self, out, target: Tensor, dead: Tensor) -> dict[str, Tensor]:
        variance = (target - target.mean(0)).pow(2).sum(-1).mean()
        terms = {"loss": out.loss, "mse_loss": out.mse_loss, "fvu": out.mse_loss / variance, "l0": out.l0,
                 "dead_fraction": dead.float().mean(), "explained_variance": 1 - out.mse_loss / variance}  # fmt: skip
        return terms | _optional_terms(out, ("sparsity_loss", "auxiliary_loss", "prefix_loss"))

    def signature(self) -> dict:
        """The config's fields that a resumed run must share (architecture, widths, k, hookpoints, base model)."""
        config = self.model.config.to_dict()
        return {key: config.get(key) for key in sorted(SaeConfig.__annotations__) if key != "hf_sae_version"}

    def folded(self, scale: Scale, output_scale: Scale | None) -> SaeModel:
        """A copy that takes raw activations: the training scales folded into its weights."""
        copy = type(self.model)(self.model.config)
        copy.load_state_dict(self.model.state_dict())
        copy.fold_activation_scale_(scale, output_scale)
        return copy.eval()


class CltTrainee(SaeTrainee):
    """A cross-layer transcoder as the trainer sees it: the layers stacked on the second-to-last axis."""

    model: CltModel

    def describe(self) -> str:
        return f"the cross-layer transcoder over {self.model.config.n_layers} layer(s)"

    def inputs(self, batch: dict[str, Tensor]) -> Tensor:
        return _stacked(batch, self.model.config.hookpoints)  # (tokens, n_layers, d_in)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        return _stacked(batch, self.model.config.output_hookpoints)  # (tokens, n_layers, d_out)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.model.config.n_layers, self.model.config.num_latents)

    def forward(self, wrapped, x: Tensor, target: Tensor, dead: Tensor, coefficient: float):
        return wrapped(x, target, return_loss=True, sparsity_coefficient=coefficient)  # no AuxK: `dead` is unused

    def metrics(self, out, target: Tensor, dead: Tensor) -> dict[str, Tensor]:
        """Summed over layers (`mse_loss`, the loss's sum of per-layer FVUs), averaged over layers (`fvu`, `l0`,
        `dead_fraction`), and per layer (`layer_<i>/...`, i the model's layer index)."""
        error = (out.reconstruction.detach() - target).pow(2).sum(-1).mean(0)  # (n_layers,)
        fvu = error / (target - target.mean(0)).pow(2).sum(-1).mean(0)  # (n_layers,)
        l0, dead = self.layer_l0(out), self.layer_dead_fraction(dead)  # (n_layers,) each
        terms = {"loss": out.loss, "mse_loss": out.mse_loss, "fvu": fvu.mean(), "l0": l0.mean(),
                 "dead_fraction": dead.mean(), "explained_variance": 1 - fvu.mean()}  # fmt: skip
        terms |= _optional_terms(out, ("sparsity_loss", "pre_act_loss"))
        for index, layer in enumerate(self.model.config.layer_indices()):
            terms |= {f"layer_{layer}/fvu": fvu[index], f"layer_{layer}/l0": l0[index],
                      f"layer_{layer}/dead_fraction": dead[index]}  # fmt: skip
        return terms

    def layer_l0(self, out) -> Tensor:
        """`(n_layers,)`: the mean count of active latents per token in each layer."""
        return (out.latents.detach() != 0).sum(-1).float().reshape(-1, self.model.config.n_layers).mean(0)

    def layer_dead_fraction(self, dead: Tensor) -> Tensor:
        """`(n_layers,)`: the fraction of each layer's latents that `dead` flags."""
        return dead.float().mean(-1)

    def signature(self) -> dict:
        config = self.model.config.to_dict()
        keys = (
            "n_layers",
            "d_in",
            "d_out",
            "num_latents",
            "architecture",
            "k",
            "sparsity_coefficient",
            "sparsity_scale",
            "pre_act_coefficient",
            "hookpoints",
            "output_hookpoints",
            "base_model_name_or_path",
        )
        return {key: config.get(key) for key in keys}  # fmt: skip


def trainee(model: SaeModel | CltModel) -> SaeTrainee:
    return CltTrainee(model) if isinstance(model, CltModel) else SaeTrainee(model)


def _stacked(batch: dict[str, Tensor], sites: Sequence[str]) -> Tensor:
    return torch.stack([batch[site] for site in sites], dim=-2)


def _optional_terms(out, names: Sequence[str]) -> dict[str, Tensor]:
    return {name: getattr(out, name) for name in names if getattr(out, name, None) is not None}
