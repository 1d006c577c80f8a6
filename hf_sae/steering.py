"""What `SaeHooks.steer` and `ablate` do to latents: an `Edit` (which latents, by how much, at which positions) and
the token information it needs (absolute positions, the padding mask, and which tokens the SAEs act on by
`lm_forward`'s rule); user input is checked here, as it comes."""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .errors import HookpointError, SteeringError
from .lm_forward import activation_norms, countable, within_norm
from .modeling_sae import SaeModel

Positions = int | Sequence[int] | slice | None


class Tokens(NamedTuple):
    """Absolute positions (batch, seq) and the real-token mask (batch, seq) of an activation, when known."""

    positions: Tensor | None
    real: Tensor | None


@dataclass(eq=False)
class Edit:
    features: Tensor  # (k,) latent indices
    values: Tensor  # (k,) amounts added, or values clamped to
    mode: Literal["add", "clamp"]
    positions: Tensor | slice | None
    last_position: Tensor | None = None  # the furthest token position seen, kept on the device (no sync per step)

    def apply_(self, z: Tensor, tokens: Tokens) -> None:
        """Edit the latents z of shape (..., num_latents) in place at the selected tokens."""
        features, values = self.features.to(z.device), self.values.to(device=z.device, dtype=z.dtype)
        old = z[..., features]  # (..., k)
        new = old + values if self.mode == "add" else values.expand_as(old)
        if (selected := self._select(tokens)) is not None:
            new = torch.where(selected[..., None], new, old)
        z[..., features] = new

    def _select(self, tokens: Tokens) -> Tensor | None:
        if self.positions is None:
            return tokens.real  # every real token; padding is left alone
        if (at := tokens.positions) is None:
            raise HookpointError(
                "Steering at `positions` needs activations shaped (batch, seq, width); this hookpoint's are not. "
                "Drop `positions` or hook a decoder block."
            )
        last = at.max()  # padding on the left counts -1, on the right repeats the last position: neither is past it
        self.last_position = last if self.last_position is None else torch.maximum(self.last_position, last)
        if isinstance(self.positions, slice):
            stop = torch.inf if self.positions.stop is None else self.positions.stop
            chosen = (at >= (self.positions.start or 0)) & (at < stop)
        else:
            chosen = torch.isin(at, self.positions.to(at.device))
        return chosen if tokens.real is None else chosen & tokens.real

    def unreached(self) -> str | None:
        """After the forwards, which of the requested positions no text reached, said for a warning; None if all
        were reached, or none are requested, or nothing ran."""
        if self.positions is None or self.last_position is None:
            return None
        last = int(self.last_position)
        if isinstance(self.positions, slice):
            asked = f"positions={self.positions}"
            missed = [] if (self.positions.start or 0) <= last else [self.positions.start]
        else:
            asked = f"positions={self.positions.tolist()}"
            missed = [p for p in self.positions.tolist() if p > last]
        if not missed:
            return None
        return (
            f"{asked}: {missed} lie beyond the text, which ran through position {last} ({last + 1} tokens, counted "
            "from each sequence's first real token and on through generated ones), so nothing was edited there"
        )


class Call(NamedTuple):
    """What the whole model was called with, for the hooks inside it: the hooked module may never see it."""

    attention_mask: Tensor | None = None
    past_length: int = 0  # the KV cache's length before this forward
    input_ids: Tensor | None = None


class TokenCounter:
    """Which tokens `SaeHooks` act on: `lm_forward`'s rule (not position 0, not a special token of `special_ids`, not
    a norm outlier by `outlier_factor`) on sequences that may come in pieces, as under `generate()` with a KV cache,
    each new token judged against the median norm of its sequence so far. With `special_ids=None`, every real token.
    """

    def __init__(self, special_ids: Tensor | None, outlier_factor: float | None):
        self.special_ids, self.outlier_factor = special_ids, outlier_factor
        self.norms: dict[str, Tensor] = {}  # per hookpoint, (batch, tokens so far) norms, NaN where not countable

    def restart(self) -> None:
        """A new sequence begins: the norms of the last one are no reference for it."""
        self.norms.clear()

    def mask(self, key: str, x: Tensor, tokens: Tokens, input_ids: Tensor | None) -> Tensor:
        """`(...)` True on the tokens of x `(..., width)` at hookpoint `key` to act on: every real token without
        per-token positions, else the rule's, with the token ids where the model was given them (not embeddings)."""
        real = tokens.real if tokens.real is not None else torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        if self.special_ids is None or tokens.positions is None:
            return real
        ids = input_ids.to(x.device) if isinstance(input_ids, Tensor) and input_ids.shape == x.shape[:2] else None
        keep = countable(ids, tokens.positions, self.special_ids) & real
        if self.outlier_factor is None:
            return keep
        norms, earlier = activation_norms(x), self.norms.get(key)
        if earlier is not None and earlier.shape[0] != x.shape[0]:
            earlier = None  # another batch than the cache's (beams reordered): judged by this forward alone
        now = norms.masked_fill(~keep, float("nan"))
        self.norms[key] = now if earlier is None else torch.cat([earlier, now], dim=-1)
        return keep & within_norm(keep, norms, self.outlier_factor, earlier)


def token_info(call: Call, x: Tensor) -> Tokens:
    """The positions and real-token mask of x `(batch, seq, width)` in the forward `call` (none for other shapes)."""
    if x.ndim != 3:
        return Tokens(None, None)
    (batch, seq), mask, past_length = x.shape[:2], call.attention_mask, call.past_length
    if mask is not None and mask.ndim == 2 and mask.shape[0] == batch and mask.shape[1] >= seq:
        # Padding on the left shifts a sequence right; counting its real tokens gives each one's own position.
        positions = mask.long().cumsum(-1)[:, -seq:] - 1
        return Tokens(positions.to(x.device), mask[:, -seq:].to(device=x.device, dtype=torch.bool))
    return Tokens(torch.arange(past_length, past_length + seq, device=x.device).expand(batch, seq), None)


def feature_values(features, alpha: float, sae: SaeModel) -> tuple[Tensor, Tensor]:
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


def positions_of(positions: Positions) -> Tensor | slice | None:
    if isinstance(positions, slice) and positions.step in (None, 1):
        start, stop = (_index(p, 2**62, "position") if p is not None else p for p in (positions.start, positions.stop))
        if stop is not None and stop <= (start or 0):
            raise SteeringError(
                f"`positions={positions}` selects no token (it stops at or before it starts). Give a stop above "
                f"the start, e.g. `slice({start or 0}, {(start or 0) + 1})`, or `slice({start or 0}, None)` for "
                "every token from there on."
            )
        return positions
    if positions is None:
        return positions
    if isinstance(positions, slice):
        raise SteeringError(f"`positions` must be token indices >= 0 or a slice with step 1; got {positions}.")
    values = _indices(positions)
    if not values:
        raise SteeringError(f"`positions` must be token indices >= 0 or a slice with step 1; got {positions}.")
    return torch.tensor([_index(p, 2**62, "position") for p in values], dtype=torch.long)
