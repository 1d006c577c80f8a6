"""Attach SAEs to any causal LM through PyTorch hooks, without changing the LM: record latents, splice
reconstructions in, steer and ablate features.

Edits keep the error term: x becomes x + decode(z') - decode(z), computed as (z' - z) @ W_dec over the edited latents
only, so an edit that changes nothing leaves x bit-identical. A transcoder reads its input hookpoint and acts on its
output hookpoint: a splice replaces the output y (an MLP's, say) by the prediction from the input, steering adds the
edited latents' decoder rows to y, and the input passes unchanged. Positions are absolute token indices within each
sequence: 0 is its first real (non-padding) token, and under `generate()` with a KV cache the count goes on through
the generated tokens. They come from the 2D attention mask the model is called with, else from the cache length.

Which tokens: by default those an SAE is trained and measured on, by `lm_forward`'s rule (not position 0, whose
residual norm on SmolLM2 is about 120 times the median, not special tokens, not norm outliers), from the ids the
model is called with (`steering.TokenCounter`); `all_tokens=True` acts on every real token.
"""

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers.utils import logging

from .errors import HookpointError, SteeringError
from .hookpoints import (
    closest_hookpoints,
    hookpoint_width,
    not_an_activation,
    register_activation_hook,
    resolve_hookpoints,
)
from .hub import load_saes
from .lm_forward import OUTLIER_FACTOR, special_token_ids
from .modeling_sae import SaeModel, saes_by_hookpoint
from .steering import Call, Edit, Positions, TokenCounter, Tokens, feature_values, positions_of, token_info

logger = logging.get_logger(__name__)

RecordKind = Literal["latents", "inputs", "reconstructions", "top_values", "top_indices"]


@dataclass(eq=False)
class _Splice:
    error_term: bool


class SaeRecorder:
    """
    What [`SaeHooks.record`] collected. Each attribute maps a hookpoint to a list with one tensor per forward (one
    per step under `generate()`): `latents` `(batch, seq, num_latents)`, after any active edit; `inputs`
    `(batch, seq, d_in)`, the hooked activations; `reconstructions` `(batch, seq, d_in)`, the decoded latents; and
    `masks` `(batch, seq)`, `True` on real (non-padding) tokens; and `counted` `(batch, seq)`, `True` on the tokens
    the SAE acted on. At the tokens it skips (position 0, special tokens and norm outliers, unless the hooks were made
    with `all_tokens=True`) latents and reconstructions are recorded as zeros; `inputs` are recorded everywhere. With
    `top_k`, only each token's `top_k` largest latents are kept, as `top_values` and `top_indices`
    `(batch, seq, top_k)`, and `latents` stays empty: memory grows with `top_k`, not with the SAE's width.
    """

    def __init__(
        self, hookpoints: Sequence[str], inputs: bool, reconstructions: bool, top_k: int | None = None, detach=True
    ):
        self.top_k, self.detach = top_k, detach
        self.latents: dict[str, list[Tensor]] = {name: [] for name in hookpoints}
        self.top_values: dict[str, list[Tensor]] = {name: [] for name in hookpoints} if top_k else {}
        self.top_indices: dict[str, list[Tensor]] = {name: [] for name in hookpoints} if top_k else {}
        self.inputs: dict[str, list[Tensor]] = {name: [] for name in hookpoints} if inputs else {}
        self.reconstructions: dict[str, list[Tensor]] = {name: [] for name in hookpoints} if reconstructions else {}
        self.masks: dict[str, list[Tensor]] = {name: [] for name in hookpoints}
        self.counted: dict[str, list[Tensor]] = {name: [] for name in hookpoints}

    def cat(self, hookpoint: str, kind: RecordKind = "latents") -> Tensor:
        """Every forward joined along the sequence: under `generate()`, `(batch, all tokens but the last, width)`."""
        return torch.cat(getattr(self, kind)[hookpoint], dim=1)

    def tokens(self, hookpoint: str, kind: RecordKind = "latents") -> Tensor:
        """The real tokens of every forward, padding dropped: `(num_tokens, width)`."""
        return torch.cat([t[mask] for t, mask in zip(getattr(self, kind)[hookpoint], self.masks[hookpoint])])

    def _add(self, name: str, z: Tensor, real: Tensor, counted: Tensor, x: Tensor, reconstruction: Tensor | None):
        if self.detach:
            z, x = z.detach(), x.detach()
            reconstruction = None if reconstruction is None else reconstruction.detach()
        if self.top_k:
            values, indices = z.topk(min(self.top_k, z.shape[-1]), dim=-1)
            self.top_values[name].append(values)
            self.top_indices[name].append(indices)
        else:
            self.latents[name].append(z)
        self.masks[name].append(real)
        self.counted[name].append(counted)
        for store, value in ((self.inputs, x), (self.reconstructions, reconstruction)):
            if name in store:
                store[name].append(value)


class SaeHooks:
    r"""
    SAEs attached to a language model by hooks, switched on by context managers that nest and compose.

    The LM is never changed: hooks exist only while a context is open and are removed when the last one exits, even
    through an exception. Activations are cast to each SAE's dtype, and the results back to the model's.

    Args:
        model (`nn.Module`): any `AutoModelForCausalLM`, or a base model.
        saes (`Mapping[str, SaeModel]` or `Sequence[SaeModel]`): SAEs by hookpoint, or SAEs whose `config.hookpoint`
            says where they read. A key that is not a module path is a name, and the SAE reads its
            `config.hookpoint` (a transcoder always does, and acts on its `config.output_hookpoint`): several SAEs can
            share a hookpoint (`{"16k": sae_a, "65k": sae_b}`). A name has no dot, or ends in `/<its hookpoint>`
            (a sweep's `"k32/model.layers.6"`): a dotted key that is no module is a misspelling, refused. Their
            edits and splices apply in the order given, each to what the one before it left. They are put in eval mode:
            each token is coded on its own (BatchTopK by its threshold), whatever else is in the batch.
        all_tokens (`bool`, defaults to `False`): act on every real token. By default the SAEs skip the tokens they
            were not trained on, by the rule training and `hf-sae eval` use (`lm_forward`): position 0, special
            tokens and norm outliers. There a splice or an edit leaves the activation as it is, and a recorder
            records zeros.
        tokenizer (*optional*): whose special tokens (`all_special_ids`) are skipped, as training skipped them; by
            default the BOS, EOS and padding ids of the model's config.
        outlier_factor (`float`, *optional*, defaults to 10.0): skip a token whose activation norm exceeds this
            times the median norm of its sequence's other tokens, as training did; `None` skips no outlier.

    Example:

    ```python
    >>> hooks = SaeHooks(lm, {"model.layers.15": sae})
    >>> with hooks.record() as recorder, hooks.steer({1234: 8.0}, mode="clamp"):
    ...     tokens = lm.generate(**inputs, max_new_tokens=20)
    >>> recorder.cat("model.layers.15").shape  # (batch, prompt + 19, num_latents)
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        saes: Mapping[str, SaeModel] | Sequence[SaeModel],
        *,
        all_tokens: bool = False,
        tokenizer=None,
        outlier_factor: float | None = OUTLIER_FACTOR,
    ):
        self.model = model
        self.counting = TokenCounter(None if all_tokens else special_token_ids(tokenizer, model), outlier_factor)
        self.saes = saes_by_hookpoint(saes, "SaeHooks")
        for sae in self.saes.values():  # batch-wide selection would tie a sequence's latents to its batch
            sae.eval()
        sites = {name: _site(model, name, sae) for name, sae in self.saes.items()}
        resolved = resolve_hookpoints(model, dict.fromkeys(sites.values()))
        self.hookpoints = {name: resolved[site] for name, site in sites.items()}
        # Where each transcoder writes its prediction; an unknown name fails here, listing the closest.
        targets = {name: sae.config.output_hookpoint for name, sae in self.saes.items() if sae.config.is_transcoder}
        resolved = resolve_hookpoints(model, dict.fromkeys(targets.values()))
        self.output_hookpoints = {name: resolved[site] for name, site in targets.items()}
        writes = {**{n: h for n, h in self.hookpoints.items() if n not in targets}, **self.output_hookpoints}
        for name, site in writes.items():  # where each SAE's splice and steering replace the activation
            if reason := not_an_activation(site):
                raise HookpointError(
                    f"The SAE at `{name}` acts on `{site.path}`, which {reason}. Attach it where the activation is "
                    "hidden states, one per token: a decoder block (`model.layers.N`) or a module inside one."
                )
        _warn_on_other_base_model(model, self.saes)
        for name, sae in self.saes.items():
            if (width := hookpoint_width(model, self.hookpoints[name])) is not None:
                _check_width(name, sae, width)
            if name in self.output_hookpoints and (width := hookpoint_width(model, self.output_hookpoints[name])):
                _check_width(name, sae, width, output=True)
        self._active: dict[str, list[_Splice | Edit | SaeRecorder]] = {name: [] for name in self.saes}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._call = Call()  # what the current forward was called with
        self._pending: dict[str, tuple[Callable[[Tensor], Tensor] | None, torch.Size]] = {}  # transcoders' edits

    @classmethod
    def from_pretrained(cls, model: nn.Module, repo_or_dir: str, hookpoints: str | list[str] | None = None, *,
                        all_tokens: bool = False, tokenizer=None, outlier_factor: float | None = OUTLIER_FACTOR,
                        **load_kwargs) -> "SaeHooks":  # fmt: skip
        r"""
        Load SAEs from a Hub repo or a local folder (`hf_sae.load_saes`) onto the model's device and attach them, as
        `PeftModel.from_pretrained(base, repo)` does for adapters. `all_tokens`, `tokenizer` and `outlier_factor` are
        the hooks' own (see the class).

        ```python
        >>> hooks = SaeHooks.from_pretrained(lm, "you/smollm2-saes", hookpoints=["model.layers.15"])
        ```
        """
        device = next(model.parameters()).device
        saes = load_saes(repo_or_dir, hookpoints, device=device, **load_kwargs)
        return cls(model, saes, all_tokens=all_tokens, tokenizer=tokenizer, outlier_factor=outlier_factor)

    @contextmanager
    def record(
        self,
        inputs: bool = False,
        reconstructions: bool = False,
        hookpoints: str | Sequence[str] | None = None,
        top_k: int | None = None,
        detach: bool = True,
    ) -> Iterator[SaeRecorder]:
        r"""
        Collect the latents, and optionally the inputs and reconstructions, of every forward run inside.

        Args:
            inputs (`bool`, defaults to `False`): also keep the hooked activations.
            reconstructions (`bool`, defaults to `False`): also keep the SAE's reconstructions.
            hookpoints (`str` or `Sequence[str]`, *optional*): only these; every SAE by default.
            top_k (`int`, *optional*): keep only each token's `top_k` largest latents (`recorder.top_values`,
                `recorder.top_indices`) instead of the dense latents, e.g. to record a long generation.
            detach (`bool`, defaults to `True`): keep the recorded tensors out of autograd, so that each forward's
                graph is freed; `False` keeps them attached, to take gradients through the latents (attribution).

        Example:

        ```python
        >>> with hooks.record() as recorder:
        ...     lm(input_ids, attention_mask=attention_mask)
        >>> recorder.tokens("model.layers.15").shape  # (real tokens, num_latents)
        ```
        """
        names = self._select(hookpoints)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise HookpointError(f"`top_k` must be a positive integer or None; got {top_k!r}.")
        recorder = SaeRecorder(names, inputs, reconstructions, top_k, detach)
        with self._activate(recorder, names):
            yield recorder

    @contextmanager
    def splice(self, error_term: bool = False, hookpoints: str | Sequence[str] | None = None) -> Iterator[None]:
        r"""
        Replace each hooked activation x by the SAE's reconstruction x̂, plus the error x - x̂ if `error_term`; a
        transcoder replaces its output hookpoint's activation y by its prediction ŷ from the input (plus y - ŷ).

        Example:

        ```python
        >>> with hooks.splice():
        ...     spliced_loss = lm(input_ids, labels=input_ids).loss
        ```
        """
        with self._activate(_Splice(error_term), self._select(hookpoints)):
            yield

    @contextmanager
    def steer(
        self,
        features: int | Sequence[int] | Tensor | Mapping[int, float],
        alpha: float = 1.0,
        *,
        mode: Literal["add", "clamp"] = "add",
        hookpoint: str | None = None,
        positions: Positions = None,
    ) -> Iterator[None]:
        r"""
        Steer with SAE features, the error term kept: x becomes x + decode(z') - decode(z).

        Args:
            features (`int`, `Sequence[int]` or `Mapping[int, float]`): latent indices, or `{latent: alpha}`.
            alpha (`float`, defaults to 1.0): with `mode="add"`, z_i += alpha, which adds alpha * W_dec[i]; with
                `mode="clamp"`, z_i = alpha ("Golden Gate" clamping, Templeton et al. 2024).
            mode (`str`, defaults to `"add"`): `"add"` or `"clamp"`.
            hookpoint (`str`, *optional*): which SAE; needed only when several are attached.
            positions (`int`, `Sequence[int]` or `slice`, *optional*): absolute positions to edit, counted from each
                sequence's first real token and on through generated ones (`slice(n, None)`: position n onwards);
                by default every token the SAE acts on. The tokens it skips (see the class) are never edited.

        Example:

        ```python
        >>> with hooks.steer({1234: 40.0}, mode="clamp"):
        ...     tokens = lm.generate(**inputs, max_new_tokens=20)
        ```
        """
        if mode not in ("add", "clamp"):
            raise SteeringError(f"`mode` must be 'add' or 'clamp'; got {mode!r}.")
        name = self._single(hookpoint)
        edit = Edit(*feature_values(features, alpha, self.saes[name]), mode, positions_of(positions))
        with self._activate(edit, [name]):
            yield
        if missed := edit.unreached():  # known only now: under `generate()` positions go on through new tokens
            logger.warning(f"Steering at `{name}` with {missed}. Pick positions within the text.")

    @contextmanager
    def ablate(
        self, features: int | Sequence[int], *, hookpoint: str | None = None, positions: Positions = None
    ) -> Iterator[None]:
        r"""
        Zero the given latents, the error term kept: what the model does without those features.

        Example:

        ```python
        >>> with hooks.ablate([12, 345]):
        ...     ablated_logits = lm(input_ids).logits
        ```
        """
        if isinstance(features, Mapping):
            raise SteeringError("`ablate` takes latent indices, not a mapping; use `steer(..., mode='clamp')`.")
        with self.steer(features, 0.0, mode="clamp", hookpoint=hookpoint, positions=positions):
            yield

    @contextmanager
    def _activate(self, item: _Splice | Edit | SaeRecorder, names: list[str]) -> Iterator[None]:
        if not self._handles:
            self._attach()
        for name in names:
            self._active[name].append(item)
        try:
            yield
        finally:  # hooks come off when the last context closes, however it closes
            for name in names:
                self._active[name] = [other for other in self._active[name] if other is not item]
            if not any(self._active.values()):
                self._detach()

    def _attach(self) -> None:
        self._signature = inspect.signature(self.model.forward)  # once, not at every forward
        self._handles.append(self.model.register_forward_pre_hook(self._remember_call, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._forget_call, always_call=True))
        by_site: dict[tuple[str, bool], list[str]] = {}  # one hook per hookpoint, running its SAEs in order
        for name, site in self.hookpoints.items():
            by_site.setdefault((site.path, site.is_input), []).append(name)
        self._handles += [
            register_activation_hook(self.hookpoints[names[0]], names[0], self._intervention(names))
            for names in by_site.values()
        ]
        # Registered last, so first at their site: SAEs reading a transcoder's output see its prediction.
        self._handles += [
            register_activation_hook(site, name, self._transcoder_output(name))
            for name, site in self.output_hookpoints.items()
        ]
        logger.debug(f"SaeHooks attached at {list(self.hookpoints)}")

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._call = Call()
        self._pending.clear()
        self.counting.restart()

    def _remember_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:  # `lm(ids, mask)`: the mask passed by position counts as well
            try:
                kwargs = {**self._signature.bind_partial(*args).arguments, **kwargs}
            except TypeError:
                pass  # a call its own forward will refuse
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0  # read before the layers extend it
        self._call = Call(kwargs.get("attention_mask"), int(past), kwargs.get("input_ids"))
        if not past:  # a new sequence: the norms of the last one are no reference for it
            self.counting.restart()

    def _forget_call(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._call = Call()
        self._pending.clear()

    def _intervention(self, names: list[str]):
        def run(x: Tensor) -> Tensor | None:
            if not any(self._active[name] for name in names):
                return None
            out = None
            tokens = token_info(self._call, x)
            counted = self.counting.mask(names[0], x, tokens, self._call.input_ids)
            for name in names:
                if self._active[name]:
                    _check_width(name, self.saes[name], x.shape[-1])
                    current = x if out is None else out
                    sae = self.saes[name]
                    edit = _run_sae(sae, current, self._active[name], tokens, counted, name)
                    if sae.config.is_transcoder:  # applied at the output hookpoint (None: it stays as it is)
                        self._pending[name] = (edit, current.shape[:-1])
                    elif edit is not None:
                        out = edit(current)
            return out

        return run

    def _transcoder_output(self, name: str):
        def run(y: Tensor) -> Tensor | None:
            sae = self.saes[name]
            if not self._active[name]:
                return None
            if name not in self._pending:
                if any(isinstance(item, _Splice | Edit) for item in self._active[name]):
                    raise HookpointError(
                        f"The transcoder `{name}` acts on `{sae.config.output_hookpoint}`, which ran before its input "
                        f"`{sae.config.hookpoint}` in this forward. Its output hookpoint must come after its input."
                    )
                return None
            edit, shape = self._pending.pop(name)
            _check_width(name, sae, y.shape[-1], output=True)
            if y.shape[:-1] != shape:
                raise HookpointError(
                    f"The transcoder `{name}` reads `{sae.config.hookpoint}` with tokens shaped {tuple(shape)} but "
                    f"acts on `{sae.config.output_hookpoint}` shaped {tuple(y.shape[:-1])}; both hookpoints must "
                    "hold the same tokens, e.g. an MLP's input and its output."
                )
            return None if edit is None else edit(y)

        return run

    def _select(self, hookpoints: str | Sequence[str] | None) -> list[str]:
        names = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints or self.saes)
        if unknown := [name for name in names if name not in self.saes]:
            raise HookpointError(f"No SAE is attached at {unknown}; these SaeHooks have {list(self.saes)}.")
        return names

    def _single(self, hookpoint: str | None) -> str:
        if hookpoint is None and len(self.saes) > 1:
            raise HookpointError(f"Several SAEs are attached ({list(self.saes)}); pass `hookpoint=` to pick one.")
        return self._select(hookpoint)[0]


def _run_sae(sae: SaeModel, x: Tensor, active: list, tokens: Tokens, counted: Tensor,
             name: str) -> Callable[[Tensor], Tensor] | None:  # fmt: skip
    """How the SAE changes the activation it acts on, x itself or a transcoder's output y: a function of it that
    returns the new one in its own dtype, or `None` to leave it as it is. Feeds the recorders on the way. Only the
    `counted` tokens `(...)` change: elsewhere the latents are zeros, edits reach nothing and splices leave y."""
    x_sae = x.to(device=sae.device, dtype=sae.dtype)
    counted = counted.to(x_sae.device)
    z = torch.where(counted[..., None], sae.encode(x_sae), 0.0)  # (..., num_latents)
    edits = [item for item in active if isinstance(item, Edit)]
    z_edited = z.clone() if edits else z
    for edit in edits:
        edit.apply_(z_edited, Tokens(tokens.positions, counted))
    splice = next((item for item in reversed(active) if isinstance(item, _Splice)), None)  # the innermost wins
    recorders = [item for item in active if isinstance(item, SaeRecorder)]
    wants_reconstruction = splice is not None or any(name in r.reconstructions for r in recorders)
    skip = sae.skip(x_sae) if wants_reconstruction else None  # (..., d_out), a skip transcoder's linear term
    reconstruction = _predict(sae, z_edited, skip) if wants_reconstruction else None  # (..., d_out)
    real = tokens.real if tokens.real is not None else torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)
    for recorder in recorders:
        recorded = None if reconstruction is None else torch.where(counted[..., None], reconstruction, 0.0)
        recorder._add(name, z_edited, real, counted, x, recorded)
    # What keeps the activation (the error term, an edit's untouched part) is added in its own dtype: it never makes
    # the round trip through the SAE's dtype, so an edit that changes nothing leaves it bit-identical.
    if splice is not None and not splice.error_term:
        return lambda y: torch.where(
            counted.to(y.device)[..., None], reconstruction.to(device=y.device, dtype=y.dtype), y
        )
    if not edits:
        return None  # a splice with its error term is the activation itself
    if splice is not None:
        delta = reconstruction - _predict(sae, z, skip)
    else:  # only the edited latents change, so only their decoder rows enter the delta: 0 when nothing changes
        features = torch.cat([edit.features for edit in edits]).unique().to(z.device)
        delta = (z_edited[..., features] - z[..., features]) @ sae.W_dec[features].to(z.dtype)
    return lambda y: y + delta.to(device=y.device, dtype=y.dtype)


def _predict(sae: SaeModel, z: Tensor, skip: Tensor | None) -> Tensor:
    return sae.decode(z) if skip is None else sae.decode(z) + skip


def _site(model: nn.Module, name: str, sae: SaeModel) -> str:
    """Where the SAE given under `name` reads: `name` itself when it is a module path, else (and always for a
    transcoder) its config's hookpoint, `name` being a label (`"16k"`, a sweep's `"k32/model.layers.6"`). A key
    spelt as a module path that is none (a dot in it) and not the SAE's own hookpoint is a misspelt hookpoint:
    refused, rather than attached silently where the config says."""
    own = sae.config.hookpoint
    try:
        resolve_hookpoints(model, [name])
    except HookpointError:
        if own is not None and "." in name and name.rpartition("/")[2] != own:
            raise HookpointError(
                f"SaeHooks got an SAE under the key {name!r}, which is not a module of {type(model).__name__}; "
                f"closest are {closest_hookpoints(model, name)}. A key is the hookpoint where its SAE acts (this "
                f"SAE's config says {own!r}); fix the spelling, or use a label without a dot (`'16k'`) to attach "
                "it at its config's hookpoint."
            ) from None
        return own or name
    return (own or name) if sae.config.is_transcoder else name


def _warn_on_other_base_model(model: nn.Module, saes: Mapping[str, SaeModel]) -> None:
    """SAEs read the activations of the model they were trained on; another model's are a different space."""
    lm = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    for name, sae in saes.items():
        base = sae.config.base_model_name_or_path
        if lm and base and lm != base:
            logger.warning(
                f"The SAE at `{name}` was trained on {base!r}, but it is attached to {lm!r}. Its latents mean "
                "something only on the activations of its own base model; load that model, or check it is the same."
            )


def _check_width(name: str, sae: SaeModel, width: int, output: bool = False) -> None:
    cfg = sae.config
    expected, field, site = (cfg.d_out, "d_out", cfg.output_hookpoint) if output else (cfg.d_in, "d_in", cfg.hookpoint)
    if width != expected:
        raise HookpointError(
            f"The SAE at `{name}` expects activations of width {field}={expected}, but the "
            f"{'output ' if output else ''}hookpoint's activation has width {width}. Attach an SAE trained on this "
            f"hookpoint (this one's config says `{site}`)."
        )
