"""`SaeModel`: a sparse autoencoder as a `transformers.PreTrainedModel`, and its loading from any SAE format.

The architecture (`config.architecture`) is looked up once, at construction, in `architectures.ARCHITECTURES`: its
extra tensors, initialisation, sparse selection, activation and penalty. Every architecture trains on a sparse code
with the kernels of `sparse_ops`; BatchTopK and Matryoshka switch to a dense threshold at inference.
"""

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .architectures import ARCHITECTURES, Architecture, initial_tensors
from .configuration_sae import SaeConfig
from .errors import HookpointError, WeightsError
from .fast_linear import linear
from .feature_store import load_features
from .formats import detect_format, read_format, unknown_format_error
from .formats.tensors import non_finite
from .hub_client import HubOptions, Located, locate_sae, network_errors, push_folder, wrong_shapes_error
from .layout import README, SINGLE_SAE_KEY, write_text
from .model_card import CARD_ARGUMENTS, card_data, copy_run_files, render_card
from .precision import as_torch_dtype, default_device
from .sparse_ops import SparseCode, sparse_encode, with_auxk

logger = logging.get_logger(__name__)


@dataclass
class SaeOutput(ModelOutput):
    """
    Output of [`SaeModel.forward`].

    Args:
        reconstruction (`torch.Tensor` of shape `(..., d_in)`): x̂, the SAE's reconstruction of its input.
        latents (`torch.Tensor` of shape `(..., num_latents)`, *optional*): the latent activations z (dense).
        latent_counts (`torch.LongTensor` of shape `(num_latents,)`): tokens of this batch on which each latent fired.
        l0 (`torch.Tensor`): mean number of active latents per token.
        loss (`torch.Tensor`, *optional*): training loss, `mse_loss + sparsity_loss + auxiliary_loss`.
        mse_loss (`torch.Tensor`, *optional*): squared error summed over d_in, averaged over tokens.
        sparsity_loss (`torch.Tensor`, *optional*): the architecture's sparsity penalty, coefficient applied.
        auxiliary_loss (`torch.Tensor`, *optional*): AuxK (k family) or the gated auxiliary reconstruction loss.
        prefix_loss (`torch.Tensor`, *optional*): Matryoshka: the squared errors of the dictionary's smaller nested
            prefixes, summed (the whole dictionary's is `mse_loss`).
    """

    reconstruction: Tensor | None = None
    latents: Tensor | None = None
    latent_counts: Tensor | None = None
    l0: Tensor | None = None
    loss: Tensor | None = None
    mse_loss: Tensor | None = None
    sparsity_loss: Tensor | None = None
    auxiliary_loss: Tensor | None = None
    prefix_loss: Tensor | None = None


class _Pass(NamedTuple):
    """What one encode-decode pass gives `forward`; the losses are None when not asked for."""

    reconstruction: Tensor  # (N, d_in)
    latents: Tensor | None  # (N, num_latents) when asked for
    latent_counts: Tensor  # (num_latents,)
    losses: dict[str, Tensor]  # the terms beyond mse_loss, by SaeOutput field name


class SaePreTrainedModel(PreTrainedModel):
    config: SaeConfig
    base_model_prefix = "sae"
    main_input_name = "x"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not isinstance(module, SaeModel):
            return
        for name, tensor in initial_tensors(module.config).items():  # the rule, whole here, a shard's rows elsewhere
            init.copy_(getattr(module, name), tensor)


SaesLike = Union["SaeModel", Mapping[str, "SaeModel"], Iterable["SaeModel"]]
# What `save_pretrained(push_to_hub=True)` passes on to `push_to_hub`.
PUSH_ARGUMENTS = ("repo_id", "private", "token", "revision", "commit_message", "create_pr")


class SaeModel(SaePreTrainedModel):
    r"""
    A sparse autoencoder over one activation of a language model.

    Example:

    ```python
    >>> import torch
    >>> from hf_sae import SaeConfig, SaeModel
    >>> sae = SaeModel(SaeConfig(d_in=64, expansion_factor=8, architecture="topk", k=4))
    >>> out = sae(torch.randn(2, 10, 64))
    >>> out.reconstruction.shape, int((out.latents != 0).sum(-1).max())
    (torch.Size([2, 10, 64]), 4)
    ```
    """

    def __init__(self, config: SaeConfig):
        super().__init__(config)
        self.architecture: Architecture = ARCHITECTURES[config.architecture]
        # W_enc (num_latents, d_in); W_dec (num_latents, d_out), row i is feature i's direction; b_dec (d_out,), d_out
        # being d_in but for transcoders; b_enc (num_latents,), the gate bias of `gated`; W_skip (d_out, d_in), a skip
        # transcoder's linear term; the architecture's extra tensors, (num_latents,) or ().
        frozen = {extra.name for extra in self.architecture.extra_tensors if not extra.trainable}
        for name, shape in config.tensor_shapes().items():
            if name in frozen:
                self.register_buffer(name, torch.empty(shape))
            else:
                self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.post_init()

    def extra_repr(self) -> str:
        cfg = self.config
        k = f", k={cfg.k}" if cfg.k is not None else ""
        out = f", output_hookpoint={cfg.output_hookpoint!r}, d_out={cfg.d_out}" if cfg.is_transcoder else ""
        skip = ", skip_connection=True" if cfg.skip_connection else ""
        return (f"{cfg.architecture}, d_in={cfg.d_in}, num_latents={cfg.num_latents}{k}, hookpoint={cfg.hookpoint!r}"
                f"{out}{skip}")  # fmt: skip

    @property
    def uses_unit_norm_decoder(self) -> bool:
        """Whether training keeps decoder rows at unit norm: all but `relu`, whose penalty weighs in the norms, and
        transcoders, whose decoder starts at zero and maps into another space (as sparsify trains them)."""
        return self.architecture.unit_norm_decoder and not self.config.is_transcoder

    @property
    def features(self):
        """Feature metadata (`hf_sae.FeatureMetadata`) from `<folder>/features/`, read on first use; for an SAE from a
        Hub repo, `<subfolder>/features/` is downloaded then."""
        if getattr(self, "_features", None) is None:
            if (fetch := getattr(self, "_hub_features", None)) is not None:
                fetch()
            self._features = load_features(self)
        return getattr(self, "_features", None)

    @features.setter
    def features(self, value) -> None:
        self._features = value

    # ---- the pieces -----------------------------------------------------------------------------------------------

    def _input_shift(self) -> Tensor | None:
        """What the encoder subtracts from its input: b_dec when `apply_b_dec_to_input`, else nothing."""
        return self.b_dec if self.config.apply_b_dec_to_input else None

    def encoder_input(self, x: Tensor) -> Tensor:
        shift = self._input_shift()
        return x if shift is None else x - shift.to(x.dtype)

    def pre_activation(self, x: Tensor) -> Tensor:
        return linear(self.encoder_input(x), self.W_enc.to(x.dtype), self.b_enc.to(x.dtype))

    def _uses_sparse_code(self) -> bool:
        return self.training or self.architecture.dense_inference is None

    def _sparse_code(self, x: Tensor, dead: Tensor | None = None) -> tuple[SparseCode, SparseCode | None]:
        """The kept pre-activation entries of a (N, d_in) batch, and for the k family the AuxK entries among `dead`
        latents when given."""
        arch = self.architecture
        select, k_aux = arch.select(self), _auxk_width(self.config, dead) if arch.uses_k else 0
        select = with_auxk(select, dead, k_aux) if k_aux else select
        return sparse_encode(x, self._input_shift(), self.W_enc, self.b_enc, select, k_aux)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations z of shape `(..., num_latents)` for activations x of shape `(..., d_in)`."""
        flat = self._check_input(x).reshape(-1, self.config.d_in)
        if self._uses_sparse_code():
            z = self.architecture.activate(self, self._sparse_code(flat)[0]).dense(self.config.num_latents)
        else:
            z = self.architecture.dense_inference(self, flat)
        return z.reshape(*x.shape[:-1], self.config.num_latents)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction x̂ of shape `(..., d_out)` from latents z of shape `(..., num_latents)`. A skip
        transcoder's prediction is `decode(z) + skip(x)`, which needs x: `forward` adds it, `decode` cannot."""
        return z @ self.W_dec.to(z.dtype) + self.b_dec.to(z.dtype)

    def skip(self, x: Tensor) -> Tensor | None:
        """A skip transcoder's linear term `x @ W_skip.T`, `(..., d_out)`; `None` without a skip connection."""
        return x @ self.W_skip.to(x.dtype).T if self.config.skip_connection else None

    def forward(
        self,
        x: Tensor,
        target: Tensor | None = None,
        *,
        return_loss: bool | None = None,
        return_latents: bool = True,
        dead_latents: Tensor | None = None,
        sparsity_coefficient: float | None = None,
    ) -> SaeOutput:
        r"""
        Encode and decode x of shape `(..., d_in)`: the reconstruction, or a transcoder's prediction of `target`.

        Args:
            target (`torch.Tensor` of shape `(..., d_out)`, *optional*): what the loss compares the output with; x by
                default, the output hookpoint's activation for a transcoder (which needs it for the loss).
            return_loss (`bool`, *optional*): compute the training loss; defaults to `self.training`.
            return_latents (`bool`, defaults to `True`): also return the dense latents (training can skip them).
            dead_latents (`torch.BoolTensor` of shape `(num_latents,)`, *optional*): latents that have not fired for
                a long time; the k family trains them with AuxK.
            sparsity_coefficient (`float`, *optional*): overrides `config.sparsity_coefficient` (for its warm-up).
        """
        cfg = self.config
        flat = self._check_input(x).reshape(-1, cfg.d_in)  # (N, d_in)
        return_loss = self.training if return_loss is None else return_loss
        coefficient = cfg.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
        flat_target = self._check_target(x, target, return_loss)  # (N, d_out), None when there is none to compare
        skip = self.skip(flat)  # (N, d_out) or None
        # What the latents must explain: the target less the skip term, which trains through the MSE alone. Without
        # a loss the architecture's pieces read only its shape.
        explained = flat.new_empty(flat.shape[0], cfg.d_out) if flat_target is None else flat_target
        explained = explained if skip is None or flat_target is None else flat_target - skip.detach()
        if self._uses_sparse_code():
            dead = dead_latents if return_loss else None
            result = self._sparse_pass(flat, explained, dead, coefficient if return_loss else None, return_latents)
        else:
            latents = self.architecture.dense_inference(self, flat)
            result = _Pass(self.decode(latents), latents if return_latents else None, (latents != 0).sum(0), {})
        if skip is not None:
            result = result._replace(reconstruction=result.reconstruction + skip)
        mse_loss = loss = None
        if return_loss:
            mse_loss = (result.reconstruction - flat_target).pow(2).sum(-1).mean()
            loss = mse_loss + sum(result.losses.values())
        latents = result.latents
        return SaeOutput(
            reconstruction=result.reconstruction.reshape(*x.shape[:-1], cfg.d_out),
            latents=None if latents is None else latents.reshape(*x.shape[:-1], cfg.num_latents),
            latent_counts=result.latent_counts,
            l0=result.latent_counts.sum() / max(flat.shape[0], 1),
            loss=loss,
            mse_loss=mse_loss,
            **result.losses,
        )

    def _sparse_pass(
        self, x: Tensor, target: Tensor, dead: Tensor | None, coefficient: float | None, return_latents: bool
    ) -> _Pass:
        """`coefficient` None: no losses. `target` (N, d_out) is what the decoder's output is compared with: x for
        an SAE, what a transcoder's latents must explain."""
        arch, with_loss = self.architecture, coefficient is not None
        pre, aux = self._sparse_code(x, dead)
        z = arch.activate(self, pre)
        if self.training and arch.after_sparse_step is not None:
            arch.after_sparse_step(self, z)
        if arch.reconstruct is None:
            reconstruction, losses = z.decode(self.W_dec) + self.b_dec.to(x.dtype), {}
        else:
            reconstruction, losses = arch.reconstruct(self, target, z, with_loss)
        if with_loss and arch.penalty is not None:
            losses |= arch.penalty(self, target, pre, z, coefficient)
        if aux is not None:
            residual = (target - reconstruction).detach()
            aux_reconstruction = aux._replace(values=aux.values.relu()).decode(self.W_dec)
            losses["auxiliary_loss"] = self.config.auxk_coefficient * _auxk_loss(target, residual, aux_reconstruction)
        num_latents = self.config.num_latents
        return _Pass(reconstruction, z.dense(num_latents) if return_latents else None, z.counts(num_latents), losses)

    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.d_in:
            raise HookpointError(
                f"SaeModel expects activations of shape (..., d_in={self.config.d_in}); got shape {tuple(x.shape)}. "
                "Check that the SAE matches the hookpoint it reads."
            )
        return x

    def _check_target(self, x: Tensor, target: Tensor | None, return_loss: bool) -> Tensor | None:
        """The (N, d_out) target: x for an SAE; a transcoder's loss needs the output hookpoint's activation."""
        cfg = self.config
        if target is None:
            if cfg.is_transcoder and return_loss:
                raise HookpointError(
                    f"This transcoder predicts `{cfg.output_hookpoint}` from `{cfg.hookpoint}`; its loss needs that "
                    "activation: pass it as `target`, shaped like x but of width d_out="
                    f"{cfg.d_out}, or call with `return_loss=False`."
                )
            return x.reshape(-1, cfg.d_in) if cfg.d_out == cfg.d_in else None  # no loss: nothing to compare with
        if target.shape[:-1] != x.shape[:-1] or target.shape[-1] != cfg.d_out:
            raise HookpointError(
                f"`target` must have shape {(*x.shape[:-1], cfg.d_out)} (x's tokens, width d_out={cfg.d_out}); got "
                f"{tuple(target.shape)}. The output hookpoint's activation must hold the same tokens as the input's."
            )
        return target.reshape(-1, cfg.d_out)

    # --------------------------------------------------------------------------------------------------------------
    # Weight maintenance used by training.

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_(self) -> None:
        """Project out the part of each decoder row's gradient along the row, so a unit-norm row stays unit-norm."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def fold_activation_scale_(self, scale: float, output_scale: float | None = None) -> None:
        """Make an SAE trained on `scale * x` take raw x: the encoder absorbs the scale, the decoder undoes it. A
        transcoder trained to predict `output_scale * y` is made to predict raw y."""
        output_scale = scale if output_scale is None else output_scale
        self.W_enc.mul_(scale)  # the gated magnitude path reuses W_enc, so it is folded too
        self.W_dec.div_(output_scale)
        self.b_dec.div_(output_scale)
        if self.config.skip_connection:
            self.W_skip.mul_(scale / output_scale)

    def save_pretrained(self, save_directory, *args, model_card: bool = True, push_to_hub: bool = False, **kwargs):
        """[`PreTrainedModel.save_pretrained`], plus hf_sae's model card as README.md (as PEFT writes one for an
        adapter): library_name hf_sae, base model, metrics and usage. `model_card=False` leaves it out.
        `push_to_hub=True` then uploads through [`SaeModel.push_to_hub`] (`repo_id`, by default the folder's name)."""
        push = {k: kwargs.pop(k) for k in PUSH_ARGUMENTS if k in kwargs} if push_to_hub else {}
        super().save_pretrained(save_directory, *args, **kwargs)
        if model_card and kwargs.get("is_main_process", True):
            folder = Path(save_directory)
            hookpoint = self.config.hookpoint or SINGLE_SAE_KEY
            card = render_card({hookpoint: folder}, folder.resolve().name, None, card_data(folder / README), True)
            write_text(folder / README, str(card))
        if push_to_hub:  # hf_sae's checked one-commit upload, not transformers' generic one
            return self.push_to_hub(push.pop("repo_id", Path(save_directory).resolve().name), **push)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                    revision: str | None = None, commit_message: str | None = None, create_pr: bool = False,
                    **card_kwargs):  # fmt: skip
        """Push this SAE to the top of `repo_id` with hf_sae's model card, in one commit, checked before upload;
        `card_kwargs`: `datasets`, `license`, `tags`."""
        if unknown := sorted(set(card_kwargs) - set(CARD_ARGUMENTS)):
            raise TypeError(
                f"SaeModel.push_to_hub does not take {unknown}: besides the repo and commit arguments it takes "
                f"{', '.join(CARD_ARGUMENTS)} for the model card, and uploads the SAE as one safetensors file."
            )
        with tempfile.TemporaryDirectory(prefix="hf-sae-push-") as tmp:
            self.save_pretrained(tmp, model_card=False)
            copy_run_files(self.name_or_path, Path(tmp))  # its folder's metrics, features and run arguments
            return push_folder(repo_id, Path(tmp), private=bool(private), token=token, revision=revision,
                               commit_message=commit_message, create_pr=create_pr, **card_kwargs)  # fmt: skip

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], strict about weights: a tensor whose shape disagrees with the config
        or that is missing raises [`WeightsError`]; a tensor this version does not know warns (a newer hf_sae).

        The source (a folder, or a Hub repo and `subfolder`) is resolved once: from the Hub only the SAE's own files
        are downloaded, and checked before any tensor is allocated. A folder in another format (SAELens, sparsify,
        dictionary_learning, Gemma Scope, Llama Scope) is detected from its files and converted."""
        source = pretrained_model_name_or_path
        with network_errors(f"Loading the SAE {str(source)!r}"):
            if kwargs.get("config") is not None:  # the caller's config: only the weights are read from the source
                return cls._checked_load(source, model_args, kwargs)
            options = HubOptions(**{key: kwargs.pop(key) for key in HubOptions._fields if key in kwargs})
            located = locate_sae(source, kwargs.pop("subfolder", None) or None, options)
            if located.format == "hf_sae":
                loaded = cls._checked_load(located.folder, model_args, kwargs)
                (loaded[0] if isinstance(loaded, tuple) else loaded)._hub_features = located.features  # None: local
                return loaded
            return converted_as_asked(cls.from_located(located), kwargs)

    @classmethod
    def from_folder(cls, folder, *, hint: str | None = None, hookpoint: str | None = None,
                    base_model: str | None = None) -> "SaeModel":  # fmt: skip
        """The SAE in a local `folder` of any known format, every tensor mapped and every scale folded in; `hint` (a
        release or repo name) says what a folder's own files may not, `hookpoint` and `base_model` override them."""
        folder = Path(folder)
        if (fmt := detect_format(folder)) is None:
            raise unknown_format_error(folder)
        return cls.from_located(Located(folder, fmt, hookpoint, hint, base_model))

    @classmethod
    def from_located(cls, located: Located) -> "SaeModel":
        """Build the SAE a `hub_client.locate_sae(s)` found: hf_sae's own format through `from_pretrained`, another
        one from the config and tensors its reader returns."""
        if located.format == "hf_sae":
            return cls.from_pretrained(located.folder)
        config, tensors = read_format(located.folder, located.format, hint=located.hint, hookpoint=located.hookpoint,
                                      base_model=located.base_model)  # fmt: skip
        refuse_non_finite(tensors, located.folder)
        with torch.device("meta"):
            sae = cls(config)
        sae.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, strict=True, assign=True)
        sae.config._name_or_path = sae.name_or_path = str(located.folder)
        return sae.eval()

    @classmethod
    def _checked_load(cls, source, model_args, kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # so that we, not a generic report, explain the mismatch
        model, info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        if info["mismatched_keys"]:
            raise wrong_shapes_error(source, model.config, sorted(info["mismatched_keys"]))
        if info["missing_keys"]:
            raise WeightsError(
                f"The weights in {source} lack {sorted(info['missing_keys'])}, which a "
                f"{model.config.architecture!r} SAE needs. The file is incomplete or was saved for another "
                "architecture."
            )
        refuse_non_finite(model.state_dict(), source)
        if info["unexpected_keys"]:
            logger.warning(
                f"Ignoring weights {sorted(info['unexpected_keys'])} in {source}: this version of hf_sae does not use "
                "them (they were probably written by a newer hf_sae). Upgrade hf_sae to use them."
            )
        return (model, info) if want_info else model


def refuse_non_finite(tensors: Mapping[str, Tensor], source) -> None:
    """Every SAE that loads, in any format, passes here: NaN or inf weights make every output NaN, silently."""
    if bad := non_finite(tensors):
        raise WeightsError(
            f"{source} holds non-finite weights: {bad}. An SAE with NaN or inf weights outputs NaN; it was refused. "
            "Use an earlier checkpoint of the run, or download or convert an intact copy."
        )


def _auxk_width(config: SaeConfig, dead: Tensor | None) -> int:
    """AuxK uses the top d_in / 2 dead latents per token (sparsify's choice), fewer if fewer are dead."""
    if dead is None or config.auxk_coefficient == 0:
        return 0
    return min(config.d_in // 2, int(dead.sum()))


def _auxk_loss(x: Tensor, residual: Tensor, aux_reconstruction: Tensor) -> Tensor:
    """Gao et al.'s normalised AuxK error ||e - ê||² / ||e - ē||², rescaled to the units of `mse_loss`."""
    error = (aux_reconstruction - residual).pow(2).sum()
    residual_variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    input_variance_per_token = (x - x.mean(0)).pow(2).sum(-1).mean().detach()
    return error / residual_variance * input_variance_per_token


def saes_by_hookpoint(saes: SaesLike, taker: str) -> dict[str, SaeModel]:
    """`{hookpoint: sae}` from one SAE, a list of SAEs whose configs name their hookpoints, or such a dict; `taker`
    names the function in the errors."""
    if isinstance(saes, str) or not isinstance(saes, Mapping | SaeModel | Iterable):
        raise HookpointError(
            f"{taker} takes SAEs: a SaeModel, a list of them or a dict {{hookpoint: SaeModel}}; got {saes!r}. Load "
            "them with `hf_sae.load_saes(repo_or_dir)`, or one with `SaeModel.from_pretrained(path)`."
        )
    pairs = (
        list(saes.items())
        if isinstance(saes, Mapping)
        else [(None, sae) for sae in ([saes] if isinstance(saes, SaeModel) else saes)]
    )
    if others := [sae for _, sae in pairs if not isinstance(sae, SaeModel)]:
        raise HookpointError(
            f"{taker} takes SaeModel objects; got {others[0]!r} ({type(others[0]).__name__}). Load SAEs with "
            "`hf_sae.load_saes(repo_or_dir)` or `SaeModel.from_pretrained(path)`."
        )
    if isinstance(saes, Mapping):
        return dict(pairs)
    names = [sae.config.hookpoint for _, sae in pairs]
    if None in names or len(set(names)) < len(names):
        raise HookpointError(
            f"SAEs given as a list must each read their own hookpoint, set in `config.hookpoint`; got {names}. "
            "Pass a dict `{hookpoint: sae}` instead."
        )
    return dict(zip(names, (sae for _, sae in pairs)))


def converted_as_asked(sae: SaeModel, kwargs: Mapping) -> SaeModel | tuple[SaeModel, dict]:
    """An SAE converted from another format, with the dtype, device and loading info that `from_pretrained`'s
    arguments ask for, as an SAE in hf_sae's own format gets them."""
    device = kwargs.get("device_map")
    device = device.get("") if isinstance(device, Mapping) else device  # {"": device}: the whole model there
    if device == "auto":
        device = default_device()
    sae = sae.to(device=device, dtype=as_torch_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))).eval()
    if kwargs.get("output_loading_info"):
        return sae, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return sae
