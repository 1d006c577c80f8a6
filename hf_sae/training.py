"""`SaeTrainingArguments` and `SaeTrainer`: train SAEs on a language model's activations with Accelerate.

One CPU, one GPU, or many processes with `accelerate launch`: each process harvests activations from its own shard
of the text with its own frozen copy of the LM; only the SAEs, the optimiser and the scheduler are prepared, so
gradients are averaged across processes and the SAEs stay identical. Several SAEs (several hookpoints, or several
configurations on one hookpoint) train from one LM forward.
"""

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from .activations import ShufflingBuffer
from .arguments import SaeTrainingArguments
from .errors import TrainingError
from .modeling_sae import SaeModel

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


class TrainerState:
    """What a resumed run needs besides weights and optimiser: step, scales, and tokens since each latent fired."""

    def __init__(self, names: list[str]):
        self.step = 0
        self.tokens = 0
        self.scales: dict[str, float] = {}
        self.tokens_since_fired: dict[str, torch.Tensor] = {}
        self.ever_fired: dict[str, torch.Tensor] = {}
        self.names = names

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class SaeTrainer:
    """The Accelerate loop. `saes` maps a name to an SAE whose `config.hookpoint` says which activation it reads;
    `buffer` serves `{hookpoint: (tokens, d_in)}` batches of this process's share of `args.batch_size`.

    Example:

    ```python
    >>> trainer = SaeTrainer(args, {"model.layers.15": sae}, buffer)
    >>> trained = trainer.train()  # copies that take raw activations
    ```
    """

    def __init__(
        self,
        args: SaeTrainingArguments,
        saes: dict[str, SaeModel],
        buffer: ShufflingBuffer,
        accelerator: Accelerator | None = None,
    ):
        self.args, self.buffer = args, buffer
        self.accelerator = accelerator or make_accelerator(args)
        self.saes = saes
        self.state = TrainerState(list(saes))
        self.output_dir = Path(args.output_dir)

    # ---- setup ----------------------------------------------------------------------------------

    def _initialise_from_data(self, batch: dict[str, torch.Tensor]) -> None:
        """Activation scales and b_dec from the first batch, averaged over processes so that all ranks agree."""
        for name, sae in self.saes.items():
            x = batch[sae.config.hookpoint].float()
            mean_norm = self.accelerator.reduce(x.norm(dim=-1).mean(), reduction="mean").item()
            scale = math.sqrt(sae.config.d_in) / mean_norm if self.args.normalize_activations else 1.0
            self.state.scales[name] = scale
            if self.args.b_dec_init != "zero":
                center = (
                    geometric_median(x * scale) if self.args.b_dec_init == "geometric_median" else (x * scale).mean(0)
                )
                with torch.no_grad():
                    sae.b_dec.copy_(self.accelerator.reduce(center.to(sae.device), reduction="mean"))
            n = sae.config.num_latents
            self.state.tokens_since_fired[name] = torch.zeros(n, dtype=torch.long)
            self.state.ever_fired[name] = torch.zeros(n, dtype=torch.bool)

    def _prepare(self) -> None:
        """Optimiser, scheduler and (under several processes) DDP wrappers. `_initialise_from_data` runs first: DDP
        broadcasts rank 0's parameters when it wraps a module, so b_dec must already hold its data-derived value
        (the same on every rank, being averaged), and Adam must see the parameters it will step."""
        names = list(self.saes)
        params = [p for sae in self.saes.values() for p in sae.parameters()]
        # The fused kernel updates all of Adam's state in one pass (it exists for CPU and CUDA).
        self.optimizer = torch.optim.Adam(params, lr=self.args.learning_rate, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.args.lr_lambda)
        prepared = self.accelerator.prepare(*self.saes.values(), self.optimizer, self.scheduler)
        self.wrapped = dict(zip(names, prepared[: len(names)]))  # what the step calls: DDP-wrapped under several
        self.optimizer, self.scheduler = prepared[len(names) :]
        for sae in self.saes.values():
            if sae.uses_unit_norm_decoder:
                sae.normalize_decoder_()

    # ---- the loop -------------------------------------------------------------------------------

    def train(self) -> dict[str, SaeModel]:
        """Train, and return copies of the SAEs that take raw activations (`trained_saes`). Trackers stay open, and
        the process group with them, until `end()`."""
        args, acc = self.args, self.accelerator
        batches = iter(self.buffer)
        resumed = self._maybe_resume()
        if not resumed:
            first = next(batches, None)
            if first is None:
                raise TrainingError("The data produced no activations; check the dataset and context size.")
            self._initialise_from_data(first)
            batches = _prepend(first, batches)
        self._prepare()
        if resumed:
            acc.load_state(str(resumed))
        if acc.is_main_process and args.report_to != "none":
            acc.init_trackers("hf_sae", config=_loggable(asdict(args)))
        self._log_start()
        bar = tqdm(total=args.num_steps, initial=self.state.step, disable=not acc.is_local_main_process, unit="step")
        start, start_tokens = time.perf_counter(), self.state.tokens
        while self.state.step < args.num_steps:
            batch = next(batches, None)
            if batch is None:
                logger.warning(f"The data ran out after {self.state.step} steps of {args.num_steps}.")
                break
            metrics = self._step(batch)
            self.state.step += 1
            self.state.tokens += args.batch_size
            bar.update(1)
            if self.state.step % args.logging_steps == 0 or self.state.step == args.num_steps:
                rate = (self.state.tokens - start_tokens) / (time.perf_counter() - start)
                bar.set_postfix(_postfix(metrics, rate))
                acc.log({**metrics, "tokens_per_second": rate}, step=self.state.step)
            if args.save_steps and self.state.step % args.save_steps == 0 and self.state.step < args.num_steps:
                self.save_checkpoint()
        bar.close()
        return self.trained_saes()

    def end(self) -> None:
        """Close the trackers (and accelerate's process group): the last call of a run, after every collective."""
        self.accelerator.end_training()

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        args, acc, state = self.args, self.accelerator, self.state
        total_loss, outputs = 0.0, {}
        for name, wrapped in self.wrapped.items():
            sae = self.saes[name]
            x = batch[sae.config.hookpoint].to(sae.device, torch.float32) * state.scales[name]
            coefficient = sae.config.sparsity_coefficient * args.sparsity_scale(state.step)
            out = wrapped(
                x,
                dead_latents=self.dead_latents(name).to(sae.device),
                return_latents=False,
                return_loss=True,
                sparsity_coefficient=coefficient,
            )
            if not torch.isfinite(out.loss):
                what = "activations" if not torch.isfinite(x).all() else "loss"
                raise TrainingError(
                    f"Non-finite {what} at step {state.step} for hookpoint {sae.config.hookpoint!r} ({name}). "
                    f"Training stopped; the last good checkpoint in {self.output_dir} is kept. Lower the "
                    "learning rate, or check the LM's activations at this hookpoint."
                )
            outputs[name] = (out, x)
            total_loss = total_loss + out.loss
        acc.backward(total_loss)
        for sae in self.saes.values():
            if sae.uses_unit_norm_decoder:
                sae.remove_gradient_parallel_to_decoder_()
        if args.max_grad_norm:
            acc.clip_grad_norm_([p for sae in self.saes.values() for p in sae.parameters()], args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {}
        for name, (out, x) in outputs.items():
            if self.saes[name].uses_unit_norm_decoder:
                self.saes[name].normalize_decoder_()
            metrics.update(self._track(name, out, x))
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _track(self, name: str, out, x: torch.Tensor) -> dict[str, float]:
        """Update dead-latent counters (firings summed over processes) and return this SAE's batch metrics."""
        state = self.state
        counts = self.accelerator.reduce(out.latent_counts, reduction="sum").cpu()
        fired = counts > 0
        state.tokens_since_fired[name] += self.args.batch_size
        state.tokens_since_fired[name][fired] = 0
        state.ever_fired[name] |= fired
        variance = (x - x.mean(0)).pow(2).sum(-1).mean()
        prefix = f"{name}/"
        return {
            prefix + "loss": out.loss.item(),
            prefix + "fvu": (out.mse_loss / variance).item(),
            prefix + "l0": out.l0.item(),
            prefix + "dead_fraction": self.dead_latents(name).float().mean().item(),
        }

    def _log_start(self) -> None:
        n_params = sum(p.numel() for sae in self.saes.values() for p in sae.parameters())
        logger.info(
            f"Training {len(self.saes)} SAE(s) ({n_params:,} parameters) for {self.args.num_steps} steps of "
            f"{self.args.batch_size} tokens on {self.accelerator.num_processes} process(es); "
            f"lr {self.args.learning_rate}, dead after {self.args.dead_window():,} tokens.",
            main_process_only=True,
        )

    # ---- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-<step>` atomically: into a temporary folder, renamed once every process has written."""
        acc = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.state.step}"
        tmp = final.with_name(final.name + ".tmp")
        acc.save_state(str(tmp))
        torch.save(self.buffer.state_dict(), tmp / f"buffer_rank{acc.process_index}.pt")
        if acc.is_main_process:
            torch.save(self.state.state_dict(), tmp / "trainer_state.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp.rename(final)
            for old in _checkpoints(self.output_dir)[: -self.args.save_total_limit or None]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def _maybe_resume(self) -> Path | None:
        choice = self.args.resume_from_checkpoint
        if not choice:
            return None
        path = (
            _checkpoints(self.output_dir)[-1] if choice == "latest" and _checkpoints(self.output_dir) else Path(choice)
        )
        if not (path / "trainer_state.pt").exists():
            raise TrainingError(
                f"No complete checkpoint at {path}. Expected a `{CHECKPOINT_PREFIX}<step>` folder written by "
                f"hf_sae (found: {[p.name for p in _checkpoints(self.output_dir)]})."
            )
        # weights_only: a checkpoint holds tensors and numbers; one that asks to run code is refused.
        self.state.load_state_dict(torch.load(path / "trainer_state.pt", weights_only=True))
        self.buffer.load_state_dict(
            torch.load(path / f"buffer_rank{self.accelerator.process_index}.pt", weights_only=True)
        )
        logger.info(f"Resuming from {path} at step {self.state.step}.", main_process_only=True)
        return path

    # ---- results --------------------------------------------------------------------------------

    def trained_saes(self) -> dict[str, SaeModel]:
        """Copies of the SAEs that take raw activations (training scale folded in, BatchTopK thresholds averaged)."""
        result = {}
        for name, sae in self.saes.items():
            if sae.config.architecture == "batchtopk":
                sae.threshold.copy_(self.accelerator.reduce(sae.threshold.detach().clone(), reduction="mean"))
            copy = SaeModel(sae.config)
            copy.load_state_dict(sae.state_dict())
            copy.fold_activation_scale_(self.state.scales[name])
            result[name] = copy.eval()
        return result

    def dead_latents(self, name: str) -> torch.Tensor:
        """(num_latents,) bool: latents that have not fired for `dead_window()` tokens."""
        return self.state.tokens_since_fired[name] >= self.args.dead_window()

    def dead_fractions(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                # "train_": over training; the held-out `dead_fraction` means never fired on the evaluation tokens.
                "train_dead_fraction": self.dead_latents(name).float().mean().item(),
                "train_never_fired_fraction": (~self.state.ever_fired[name]).float().mean().item(),
            }
            for name in self.saes
        }


def make_accelerator(args: SaeTrainingArguments) -> Accelerator:
    return Accelerator(
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        mixed_precision=args.mixed_precision,
    )


def geometric_median(points: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to `points` (N, d). Robust to outliers."""
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=-1).clamp_min(1e-8)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() < 1e-6 * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median


def check_output_dir(args: SaeTrainingArguments) -> None:
    """Refuse an output directory holding another run unless told to overwrite it or resume from it."""
    path = Path(args.output_dir)
    if not path.exists() or not any(path.iterdir()) or args.resume_from_checkpoint:
        return
    if not args.overwrite_output_dir:
        raise TrainingError(
            f"Output directory {path} already holds a run ({', '.join(sorted(p.name for p in path.iterdir())[:5])}). "
            "Pass --overwrite_output_dir to replace it, --resume_from_checkpoint latest to continue it, or choose "
            "another --output_dir."
        )


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _postfix(metrics: dict[str, float], rate: float) -> dict[str, str]:
    """The progress bar shows the first SAE's numbers; the logs hold every SAE's."""
    name = next(key for key in metrics if key.endswith("/loss")).rsplit("/", 1)[0]
    return {
        "tok/s": f"{rate:,.0f}",
        "loss": f"{metrics[name + '/loss']:.3g}",
        "l0": f"{metrics[name + '/l0']:.1f}",
        "fvu": f"{metrics[name + '/fvu']:.3f}",
        "dead": f"{100 * metrics[name + '/dead_fraction']:.1f}%",
    }


def _loggable(config: dict) -> dict:
    return {
        key: value if isinstance(value, int | float | str | bool) else json.dumps(value)
        for key, value in config.items()
    }
