"""Attach SAEs to any causal LM through PyTorch hooks, without changing the LM: record latents, splice
reconstructions in, steer and ablate features.

Edits keep the error term: x becomes x + decode(z') - decode(z), computed as (z' - z) @ W_dec over the edited latents
only, so an edit that changes nothing leaves x bit-identical. A transcoder reads its input hookpoint and acts on its
output hookpoint: a splice replaces the output y (an MLP's, say) by the prediction from the input, steering adds the
edited latents' decoder rows to y, and the input passes unchanged. Positions are absolute token indices within each
sequence: 0 is its first real (non-padding) token, and under `generate()` with a KV cache the count goes on through
the generated tokens. They come from the 2D attention mask the model is called with, else from the cache length.
"""

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from transformers.utils import logging

from .errors import HookpointError, SteeringError
from .hookpoints import hookpoint_width, register_activation_hook, resolve_hookpoints
from .modeling_sae import SaeModel

logger = logging.get_logger(__name__)

Positions = int | Sequence[int] | slice | None
RecordKind = Literal["latents", "inputs", "reconstructions", "top_values", "top_indices"]


@dataclass(eq=False)
class _Splice:
    error_term: bool


class _Tokens(NamedTuple):
    """Absolute positions (batch, seq) and the real-token mask (batch, seq) of an activation, when known."""

    positions: Tensor | None
    real: Tensor | None


@dataclass(eq=False)
class _Edit:
    features: Tensor  # (k,) latent indices
    values: Tensor  # (k,) amounts added, or values clamped to
    mode: Literal["add", "clamp"]
    positions: Tensor | slice | None

    def apply_(self, z: Tensor, tokens: _Tokens) -> None:
        """Edit the latents z of shape (..., num_latents) in place at the selected tokens."""
        features, values = self.features.to(z.device), self.values.to(device=z.device, dtype=z.dtype)
        old = z[..., features]  # (..., k)
        new = old + values if self.mode == "add" else values.expand_as(old)
        if (selected := self._select(tokens)) is not None:
            new = torch.where(selected[..., None], new, old)
        z[..., features] = new

    def _select(self, tokens: _Tokens) -> Tensor | None:
        if self.positions is None:
            return tokens.real  # every real token; padding is left alone
        if (at := tokens.positions) is None:
            raise HookpointError(
                "Steering at `positions` needs activations shaped (batch, seq, width); this hookpoint's are not. "
                "Drop `positions` or hook a decoder block."
            )
        if isinstance(self.positions, slice):
            stop = torch.inf if self.positions.stop is None else self.positions.stop
            chosen = (at >= (self.positions.start or 0)) & (at < stop)
        else:
            chosen = torch.isin(at, self.positions.to(at.device))
        return chosen if tokens.real is None else chosen & tokens.real


def _token_info(attention_mask: Tensor | None, past_length: int, x: Tensor) -> _Tokens:
    if x.ndim != 3:
        return _Tokens(None, None)
    (batch, seq), mask = x.shape[:2], attention_mask
    if mask is not None and mask.ndim == 2 and mask.shape[0] == batch and mask.shape[1] >= seq:
        # Padding on the left shifts a sequence right; counting its real tokens gives each one's own position.
        positions = mask.long().cumsum(-1)[:, -seq:] - 1
        return _Tokens(positions.to(x.device), mask[:, -seq:].to(device=x.device, dtype=torch.bool))
    return _Tokens(torch.arange(past_length, past_length + seq, device=x.device).expand(batch, seq), None)


class SaeRecorder:
    """
    What [`SaeHooks.record`] collected. Each attribute maps a hookpoint to a list with one tensor per forward (one
    per step under `generate()`): `latents` `(batch, seq, num_latents)`, after any active edit; `inputs`
    `(batch, seq, d_in)`, the hooked activations; `reconstructions` `(batch, seq, d_in)`, the decoded latents; and
    `masks` `(batch, seq)`, `True` on real (non-padding) tokens. With `top_k`, only each token's `top_k` largest
    latents are kept, as `top_values` and `top_indices` `(batch, seq, top_k)`, and `latents` stays empty: memory
    grows with `top_k`, not with the SAE's width.
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

    def cat(self, hookpoint: str, kind: RecordKind = "latents") -> Tensor:
        """Every forward joined along the sequence: under `generate()`, `(batch, all tokens but the last, width)`."""
        return torch.cat(getattr(self, kind)[hookpoint], dim=1)

    def tokens(self, hookpoint: str, kind: RecordKind = "latents") -> Tensor:
        """The real tokens of every forward, padding dropped: `(num_tokens, width)`."""
        return torch.cat([t[mask] for t, mask in zip(getattr(self, kind)[hookpoint], self.masks[hookpoint])])

    def _add(self, name: str, z: Tensor, real: Tensor, x: Tensor, reconstruction: Tensor | None) -> None:
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
            share a hookpoint (`{"16k": sae_a, "65k": sae_b}`); their edits and
            splices apply in the order given, each to what the one before it left. They are put in eval mode:
            each token is coded on its own (BatchTopK by its threshold), whatever else is in the batch.

    Example:

    ```python
    >>> hooks = SaeHooks(lm, {"model.layers.15": sae})
    >>> with hooks.record() as recorder, hooks.steer({1234: 8.0}, mode="clamp"):
    ...     tokens = lm.generate(**inputs, max_new_tokens=20)
    >>> recorder.cat("model.layers.15").shape  # (batch, prompt + 19, num_latents)
    ```
    """

    def __init__(self, model: nn.Module, saes: Mapping[str, SaeModel] | Sequence[SaeModel]):
        self.model = model
        self.saes = _saes_by_hookpoint(saes)
        for sae in self.saes.values():  # batch-wide selection would tie a sequence's latents to its batch
            sae.eval()
        sites = {name: name if _is_module_path(model, name) and not sae.config.is_transcoder
                 else sae.config.hookpoint or name for name, sae in self.saes.items()}  # fmt: skip
        resolved = resolve_hookpoints(model, dict.fromkeys(sites.values()))
        self.hookpoints = {name: resolved[site] for name, site in sites.items()}
        # Where each transcoder writes its prediction; an unknown name fails here, listing the closest.
        targets = {name: sae.config.output_hookpoint for name, sae in self.saes.items() if sae.config.is_transcoder}
        resolved = resolve_hookpoints(model, dict.fromkeys(targets.values()))
        self.output_hookpoints = {name: resolved[site] for name, site in targets.items()}
        _warn_on_other_base_model(model, self.saes)
        for name, sae in self.saes.items():
            if (width := hookpoint_width(model, self.hookpoints[name])) is not None:
                _check_width(name, sae, width)
            if name in self.output_hookpoints and (width := hookpoint_width(model, self.output_hookpoints[name])):
                _check_width(name, sae, width, output=True)
        self._active: dict[str, list[_Splice | _Edit | SaeRecorder]] = {name: [] for name in self.saes}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._call: tuple[Tensor | None, int] = (None, 0)  # the current forward's (attention mask, cache length)
        self._pending: dict[str, tuple[Callable[[Tensor], Tensor] | None, torch.Size]] = {}  # transcoders' edits

    @classmethod
    def from_pretrained(cls, model: nn.Module, repo_or_dir: str, hookpoints: str | list[str] | None = None,
                        **load_kwargs) -> "SaeHooks":  # fmt: skip
        r"""
        Load SAEs from a Hub repo or a local folder (`hf_sae.load_saes`) onto the model's device and attach them, as
        `PeftModel.from_pretrained(base, repo)` does for adapters.

        ```python
        >>> hooks = SaeHooks.from_pretrained(lm, "you/smollm2-saes", hookpoints=["model.layers.15"])
        ```
        """
        from .hub import load_saes  # the Hub layer builds on this module, not the other way round

        device = next(model.parameters()).device
        return cls(model, load_saes(repo_or_dir, hookpoints, device=device, **load_kwargs))

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
                every real token by default.

        Example:

        ```python
        >>> with hooks.steer({1234: 40.0}, mode="clamp"):
        ...     tokens = lm.generate(**inputs, max_new_tokens=20)
        ```
        """
        if mode not in ("add", "clamp"):
            raise SteeringError(f"`mode` must be 'add' or 'clamp'; got {mode!r}.")
        name = self._single(hookpoint)
        edit = _Edit(*_feature_values(features, alpha, self.saes[name]), mode, _positions(positions))
        with self._activate(edit, [name]):
            yield

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
    def _activate(self, item: _Splice | _Edit | SaeRecorder, names: list[str]) -> Iterator[None]:
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
        # Positions need what the whole model was called with: the hooked module may never see the mask.
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
        self._call = (None, 0)
        self._pending.clear()

    def _remember_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:  # `lm(ids, mask)`: the mask passed by position counts as well
            try:
                kwargs = {**self._signature.bind_partial(*args).arguments, **kwargs}
            except TypeError:
                pass  # a call its own forward will refuse
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0  # read before the layers extend it
        self._call = (kwargs.get("attention_mask"), int(past))

    def _forget_call(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._call = (None, 0)
        self._pending.clear()

    def _intervention(self, names: list[str]):
        def run(x: Tensor) -> Tensor | None:
            out = None
            for name in names:
                if self._active[name]:
                    _check_width(name, self.saes[name], x.shape[-1])
                    current = x if out is None else out
                    sae = self.saes[name]
                    edit = _run_sae(sae, current, self._active[name], _token_info(*self._call, x), name)
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
                if any(isinstance(item, _Splice | _Edit) for item in self._active[name]):
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


def _run_sae(sae: SaeModel, x: Tensor, active: list, tokens: _Tokens, name: str) -> Callable[[Tensor], Tensor] | None:
    """How the SAE changes the activation it acts on, x itself or a transcoder's output y: a function of it that
    returns the new one in its own dtype, or `None` to leave it as it is. Feeds the recorders on the way."""
    x_sae = x.to(device=sae.device, dtype=sae.dtype)
    z = sae.encode(x_sae)  # (..., num_latents)
    edits = [item for item in active if isinstance(item, _Edit)]
    z_edited = z.clone() if edits else z
    for edit in edits:
        edit.apply_(z_edited, tokens)
    splice = next((item for item in reversed(active) if isinstance(item, _Splice)), None)  # the innermost wins
    recorders = [item for item in active if isinstance(item, SaeRecorder)]
    wants_reconstruction = splice is not None or any(name in r.reconstructions for r in recorders)
    skip = sae.skip(x_sae) if wants_reconstruction else None  # (..., d_out), a skip transcoder's linear term
    reconstruction = _predict(sae, z_edited, skip) if wants_reconstruction else None  # (..., d_out)
    real = tokens.real if tokens.real is not None else torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)
    for recorder in recorders:
        recorder._add(name, z_edited, real, x, reconstruction)
    # What keeps the activation (the error term, an edit's untouched part) is added in its own dtype: it never makes
    # the round trip through the SAE's dtype, so an edit that changes nothing leaves it bit-identical.
    if splice is not None and not splice.error_term:
        return lambda y: reconstruction.to(device=y.device, dtype=y.dtype)
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


def _saes_by_hookpoint(saes: Mapping[str, SaeModel] | Sequence[SaeModel]) -> dict[str, SaeModel]:
    if isinstance(saes, str) or not isinstance(saes, Mapping | SaeModel | Iterable):
        raise HookpointError(
            f"SaeHooks takes SAEs: a SaeModel, a list of them or a dict {{hookpoint: SaeModel}}; got {saes!r}. Load "
            "them with `hf_sae.load_saes(repo_or_dir)`, or use `SaeHooks.from_pretrained(model, repo_or_dir)`."
        )
    if isinstance(saes, Mapping):
        _check_are_saes(saes.values())
        return dict(saes)
    saes = [saes] if isinstance(saes, SaeModel) else list(saes)
    _check_are_saes(saes)
    names = [sae.config.hookpoint for sae in saes]
    if None in names or len(set(names)) < len(names):
        raise HookpointError(
            f"SAEs given as a list must each read their own hookpoint, set in `config.hookpoint`; got {names}. "
            "Pass a dict `{hookpoint: sae}` instead."
        )
    return dict(zip(names, saes))


def _check_are_saes(saes: Iterable) -> None:
    if others := [sae for sae in saes if not isinstance(sae, SaeModel)]:
        raise HookpointError(
            f"SaeHooks takes SaeModel objects; got {others[0]!r} ({type(others[0]).__name__}). Load SAEs with "
            "`hf_sae.load_saes(repo_or_dir)` or `SaeModel.from_pretrained(path)`."
        )


def _is_module_path(model: nn.Module, name: str) -> bool:
    try:
        resolve_hookpoints(model, [name])
    except HookpointError:
        return False
    return True


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


def _feature_values(features, alpha: float, sae: SaeModel) -> tuple[Tensor, Tensor]:
    """Latent indices (k,) and their amounts (k,), checked against the SAE's width. Indices may be ints, numpy
    integers, integer tensors (0-d, as `argmax` returns, or 1-d) and lists of them, or keys of `{latent: alpha}`."""
    n = sae.config.num_latents
    pairs = list(features.items()) if isinstance(features, Mapping) else [(i, alpha) for i in _indices(features)]
    if not pairs:
        raise SteeringError(f"Features must be latent indices in [0, {n}); got none ({features!r}).")
    by_feature = {}
    for index, value in pairs:
        index, value = _index(index, n, "feature"), _amount(value, index)
        by_feature[index] = value
    return torch.tensor(list(by_feature), dtype=torch.long), torch.tensor(list(by_feature.values()))


def _indices(values) -> list:
    """A single index or a sequence / array / tensor of them, as a list (a string is neither, and is refused)."""
    if isinstance(values, str | bytes) or values is None:
        raise SteeringError(
            f"Latent indices must be integers (int, numpy integer, integer tensor) or a list of them; got "
            f"{values!r}. Write `12`, not `'12'`."
        )
    if isinstance(values, Tensor | np.ndarray):
        return [values] if values.ndim == 0 else list(values.reshape(-1))
    if isinstance(values, int | np.integer):
        return [values]
    if isinstance(values, Iterable):
        return list(values)
    return [values]  # one value of another type: `_index` names it


def _index(value, n: int, what: str) -> int:
    """An integer index in [0, n), from an int, a numpy integer or a 0-d integer tensor; anything else is refused."""
    if isinstance(value, Tensor | np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise SteeringError(
            f"A {what} index must be an integer (int, numpy integer or integer tensor); got {value!r} of type "
            f"{type(value).__name__}."
        )
    if not 0 <= int(value) < n:
        expected = f"latent indices in [0, {n})" if what == "feature" else "token positions >= 0"
        raise SteeringError(f"{what.capitalize()}s must be {expected}; got {int(value)}.")
    return int(value)


def _amount(value, index: int) -> float:
    if isinstance(value, Tensor | np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise SteeringError(f"The amount for feature {index} must be a number; got {value!r}.")
    if not math.isfinite(value):
        raise SteeringError(f"The amount for feature {index} must be a finite number; got {value!r}.")
    return float(value)


def _positions(positions: Positions) -> Tensor | slice | None:
    if positions is None or (isinstance(positions, slice) and positions.step in (None, 1)):
        return positions
    if isinstance(positions, slice):
        raise SteeringError(f"`positions` must be token indices >= 0 or a slice with step 1; got {positions}.")
    values = _indices(positions)
    if not values:
        raise SteeringError(f"`positions` must be token indices >= 0 or a slice with step 1; got {positions}.")
    return torch.tensor([_index(p, 2**62, "position") for p in values], dtype=torch.long)
