"""What changes over a training run, from its `SaeTrainingArguments`: the number of steps, the learning rate's
warm-up and decay, the sparsity coefficient's warm-up, and the window after which a silent latent is dead. Lengths
are fractions of the run, so a ten-minute run and a ten-day run get the same shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ArgumentError

if TYPE_CHECKING:
    from .arguments import SaeTrainingArguments

DEAD_WINDOW_TOKENS = 10_000_000  # the longest default window: at most a quarter of the run


class Schedule:
    def __init__(self, args: SaeTrainingArguments):
        if args.train_tokens is None:  # `train_saes` resolves the default run's; a trainer driven directly cannot
            raise ArgumentError("train_tokens is None: set the tokens to train on (train_tokens=N).")
        self.num_steps = max(args.train_tokens // args.batch_size, 1)
        self.lr_warmup = max(int(args.lr_warmup_fraction * self.num_steps), 1)
        self.lr_decay = int(args.lr_decay_fraction * self.num_steps)
        self.sparsity_warmup = int(args.sparsity_warmup_fraction * self.num_steps)
        # Tokens without firing after which a latent is dead: never longer than the run, or none would ever be.
        quarter = max(min(DEAD_WINDOW_TOKENS, args.train_tokens // 4), args.batch_size)
        self.dead_window = args.dead_after_tokens or quarter

    def lr_lambda(self, step: int) -> float:
        """The learning rate's factor at `step`: linear warm-up, constant, then linear decay to zero."""
        if step < self.lr_warmup:
            return (step + 1) / self.lr_warmup
        if self.lr_decay and step >= self.num_steps - self.lr_decay:
            return max(self.num_steps - step, 0) / self.lr_decay
        return 1.0

    def sparsity_scale(self, step: int) -> float:
        """The sparsity coefficient's factor at `step`: a linear warm-up to 1."""
        return 1.0 if self.sparsity_warmup == 0 else min((step + 1) / self.sparsity_warmup, 1.0)
