"""`SaeTrainer`: train SAEs on a language model's activations with Accelerate (its arguments: `arguments`).

One CPU, one GPU, or many processes (`torchrun`, `hf-sae train --num_processes N`): each process harvests
activations from its own shard of the text with its own frozen copy of the LM; only the SAEs and the optimiser are
prepared, so gradients are averaged across processes and the SAEs stay identical. Several SAEs (several hookpoints,
or several configurations on one hookpoint, or a cross-layer transcoder over many layers) train from one LM forward;
what differs between them (inputs, targets, scales, metrics, the fold-in at the end) each model's `trainees` entry
says. The hot loop never waits on the host except
on logging steps and checkpoints: metrics and the non-finite check are read there, in one transfer.

    TrainerState       what a resumed run needs besides weights: step, scales, tokens since each latent fired
    SaeTrainer         prepare (scales, b_dec, optimiser) -> step (one optimiser step) -> trained_saes
    make_accelerator   the run's Accelerator, refusing a launch it would misread
The schedules are `schedules.Schedule`'s; checkpoints are written and restored by `checkpoints`.
"""

import itertools
import math
import os
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs, gather_object
from tqdm.auto import tqdm

from .activations import ShufflingBuffer
from .arguments import SaeTrainingArguments
from .checkpoints import load_weights, restore_checkpoint, save_checkpoint
from .configuration_sae import SaeConfig
from .distribution import gather_to_main, send_to_owners
from .errors import TrainingError
from .modeling_clt import CltModel
from .modeling_sae import SaeModel
from .precision import default_device, resolve_mixed_precision
from .run_folders import resume_advice
from .schedules import Schedule
from .trackers import RunTrackers, TrackedRun
from .trainees import Scale, scale_from_norms, scaled, trainee

logger = get_logger(__name__)


class TrainerState:
    """What a resumed run needs besides weights and optimiser: step, scales, and tokens since each latent fired."""

    def __init__(self, names: list[str], world_size: int = 1):
        self.world_size = world_size  # a resumed run must have as many processes: each has its own data shard
        self.feature_shards = 1  # and as many feature shards: each process holds its rows of every SAE
        self.step = 0
        self.tokens = 0
        self.scales: dict[str, Scale] = {}  # a float, or one per layer for a cross-layer transcoder
        self.output_scales: dict[str, Scale] = {}  # a transcoder's target scale
        self.tokens_since_fired: dict[str, torch.Tensor] = {}
        self.ever_fired: dict[str, torch.Tensor] = {}
        self.names = names

    def state_dict(self) -> dict:
        on_cpu = {key: {n: t.cpu() for n, t in value.items()} if key in ("tokens_since_fired", "ever_fired") else value
                  for key, value in vars(self).items()}  # fmt: skip
        return on_cpu

    def load_state_dict(self, state: dict, devices: dict[str, torch.device]) -> None:
        for key in ("tokens_since_fired", "ever_fired"):
            state[key] = {name: tensor.to(devices[name]) for name, tensor in state[key].items()}
        vars(self).update(state)


class SaeTrainer:
    """The Accelerate loop. `saes` maps a name to an SAE whose `config.hookpoint` says which activation it reads, or
    to a `CltModel` reading its `config.hookpoints` and predicting its `config.output_hookpoints`; `buffer` serves
    `{hookpoint: (tokens, d_in)}` batches of this process's share of `args.batch_size`.

    Example:

    ```python
    >>> trainer = SaeTrainer(args, {"model.layers.15": sae}, buffer)
    >>> trained = trainer.train()  # copies that take raw activations
    ```
    """

    shards = None  # `feature_shards.FeatureShards` where each process holds some latents of every SAE

    def __init__(
        self,
        args: SaeTrainingArguments,
        saes: dict[str, SaeModel | CltModel],
        buffer: ShufflingBuffer,
        accelerator: Accelerator | None = None,
        owners: dict[str, int] | None = None,
        learning_rates: dict[str, float] | None = None,
    ):
        """`owners` (`{hookpoint: rank}`, from `distribution.hookpoint_owners`) spreads hookpoints over the
        processes: `saes` are then this process's own, and it trains them on the whole global batch.
        `learning_rates` sets some SAEs' own rates (a sweep); the others take `args.learning_rate`."""
        args = args.with_learning_rate()  # a runner has resolved it already; a direct caller may not have
        self.args, self.buffer, self.owners = args, buffer, owners
        self.learning_rates = {name: (learning_rates or {}).get(name, args.learning_rate) for name in saes}
        self.hparams = asdict(args)  # what the trackers record; a runner adds the other argument groups
        self.tracked_runs = None  # one tracker run per configuration (a runner's); None: one run of every SAE
        self.accelerator = accelerator or make_accelerator(args)
        self.saes = saes
        self.trainees = {name: trainee(sae) for name, sae in saes.items()}
        self.state = TrainerState(list(saes), self.accelerator.num_processes)
        self.schedule = Schedule(args)
        self.output_dir = Path(args.output_dir)

    # ---- setup ----------------------------------------------------------------------------------

    def _initialise_from_data(self, batch: dict[str, torch.Tensor]) -> None:
        """Activation scales and b_dec from the first optimiser step's tokens, averaged over processes so that all
        ranks agree."""
        for name, sae in self.saes.items():
            model = self.trainees[name]
            x, target = model.inputs(batch), model.targets(batch)
            self.state.scales[name] = self._scale(x.to(sae.device, torch.float32))
            # b_dec is the output's bias: a transcoder's starts at the centre of its target.
            y = (x if target is None else target).to(sae.device, torch.float32)
            scale = self.state.output_scales[name] = self.state.scales[name] if target is None else self._scale(y)
            if self.args.b_dec_init != "zero":
                y = scaled(y, scale, sae.device)
                center = geometric_median(y) if self.args.b_dec_init == "geometric_median" else y.mean(0)
                with torch.no_grad():
                    sae.b_dec.copy_(self._across_ranks(center, "mean"))
            shape = model.latent_shape
            self.state.tokens_since_fired[name] = torch.zeros(shape, dtype=torch.long, device=sae.device)
            self.state.ever_fired[name] = torch.zeros(shape, dtype=torch.bool, device=sae.device)

    def _scale(self, x: torch.Tensor) -> Scale:
        """The factor that brings activations x (N, d) to mean norm sqrt(d), or 1 without normalisation; one per layer
        for x (N, n_layers, d)."""
        mean_norms = self._across_ranks(x.norm(dim=-1).mean(0), "mean")  # every rank takes part, either way
        if not self.args.normalize_activations:
            mean_norms = torch.full_like(mean_norms, math.sqrt(x.shape[-1]))  # scale 1
        return scale_from_norms(mean_norms, x.shape[-1])

    def _across_ranks(self, value: torch.Tensor, reduction: str) -> torch.Tensor:
        """Reduced over the processes' shards; an owner of distributed hookpoints already holds the global batch."""
        return value if self.owners else self.accelerator.reduce(value, reduction=reduction)

    def _batches(self):
        """The buffer's micro-batches, sent to their hookpoints' owners when hookpoints are distributed."""
        rank = self.accelerator.process_index
        for batch in self.buffer:
            yield send_to_owners(batch, self.owners, rank) if self.owners else batch

    def prepare(self, first_batch: dict[str, torch.Tensor] | None = None) -> None:
        """Optimiser, scheduler and (under several processes) DDP wrappers, after initialising scales and b_dec from
        `first_batch` (a new run's first optimiser step; a resumed run has them from its checkpoint). In this order:
        DDP broadcasts rank 0's parameters when it wraps a module, so b_dec must already hold its data-derived value
        (the same on every rank, being averaged), and Adam must see the parameters it will step."""
        if first_batch is not None:
            self._initialise_from_data(first_batch)
        names = list(self.saes)
        params = [
            {"params": list(sae.parameters()), "lr": self.learning_rates[name]} for name, sae in self.saes.items()
        ]
        # The fused kernel updates all of Adam's state in one pass (it exists for CPU and CUDA).
        optimizer = torch.optim.Adam(params, lr=self.args.learning_rate, fused=True)
        # Owned SAEs see global batches, feature shards their group's: no DDP.
        models = [] if self.per_rank_weights else list(self.saes.values())
        prepared = self.accelerator.prepare(*models, optimizer)
        self.wrapped = dict(zip(names, prepared[:-1])) if models else dict(self.saes)  # what the step calls
        self.optimizer = prepared[-1] if models else prepared
        # Not prepared: accelerate would step a prepared scheduler once per process at every optimiser step.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self.schedule.lr_lambda)
        for sae in self.saes.values():
            if sae.uses_unit_norm_decoder:
                sae.normalize_decoder_()
        # The step at which each SAE first saw non-finite activations / loss, kept on the device (-1: none), so
        # that checking costs no host synchronisation per step; read on logging steps and before checkpoints.
        self.first_bad = {name: torch.full((2,), -1, device=sae.device) for name, sae in self.saes.items()}
        self.grad_norms = {name: torch.zeros((), device=sae.device) for name, sae in self.saes.items()}

    # ---- the loop -------------------------------------------------------------------------------

    def train(self) -> dict[str, SaeModel | CltModel]:
        """Train, and return copies of the SAEs that take raw activations (`trained_saes`). Trackers stay open, and
        the process group with them, until `end()`."""
        args, acc, num_steps = self.args, self.accelerator, self.schedule.num_steps
        micro_steps = args.gradient_accumulation_steps
        bar = tqdm(total=num_steps, disable=not acc.is_local_main_process, unit="step")
        if hasattr(self.buffer, "on_status"):  # the bar says what the buffer is doing from the first chunk
            self.buffer.on_status = bar.set_description
        else:  # a source that never waits on harvesting (a cache replay)
            bar.set_description("training")
        batches = self._batches()
        resumed = restore_checkpoint(self)
        if resumed:
            self.prepare()
            load_weights(self)
        else:
            first = list(itertools.islice(batches, micro_steps))
            if not first:
                raise TrainingError("The data produced no activations; check the dataset and context size.")
            self.prepare({h: torch.cat([b[h] for b in first]) for h in first[0]})
            batches = itertools.chain(first, batches)
        default_run = TrackedRun.of(None, self.hparams, list(self.saes), args.learning_rate)
        self.trackers = RunTrackers(acc, args, self.saes, self.tracked_runs or [default_run])
        self._log_start()
        bar.update(self.state.step)
        start, start_tokens = time.perf_counter(), self.state.tokens
        while self.state.step < num_steps:
            micro_batches = list(itertools.islice(batches, micro_steps))
            if len(micro_batches) < micro_steps:
                logger.warning(f"The data ran out after {self.state.step} steps of {num_steps}.")
                break
            metrics = self.step(micro_batches)
            self.state.step += 1
            self.state.tokens += args.batch_size
            bar.update(1)
            if metrics is not None:
                rate = (self.state.tokens - start_tokens) / (time.perf_counter() - start)
                bar.set_postfix(_postfix(metrics, rate))
                self.trackers.log({**metrics, "tokens_per_second": rate}, self.state.step)
            if args.save_steps and self.state.step % args.save_steps == 0 and self.state.step < num_steps:
                self.check_finite()
                self.save_checkpoint()
        bar.close()
        self.check_finite()
        trained, self.final_dead = self.trained_saes(), self._dead_fractions()
        if self.owners:  # the main process gets every SAE, to evaluate and save
            parts = gather_to_main([({n: (sae.config.to_dict(), sae.state_dict()) for n, sae in trained.items()},
                                     self.final_dead)])  # fmt: skip
            trained, self.final_dead = _merge_parts(parts) if parts is not None else ({}, {})
        return trained

    def log_report(self, report: dict[str, dict], histograms: dict[str, dict] | None = None) -> None:
        self.trackers.log_report(report, histograms, self.state.step)

    def end(self) -> None:
        """Close the trackers and accelerate's process group: the last call of a run, after every collective."""
        self.trackers.end()
        self.accelerator.end_training()

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float] | None:
        """One optimiser step over `gradient_accumulation_steps` micro-batches (the accelerate way: gradients
        synchronise on the last one only), once `prepare` has run. Returns the metrics on logging steps, else None (no
        host sync)."""
        args, acc = self.args, self.accelerator
        for batch in micro_batches:
            with acc.accumulate(*self.wrapped.values()):
                outputs = self._forward(batch)
                acc.backward(sum(out.loss for out, _ in outputs.values()))
                if acc.sync_gradients:
                    for sae in self.saes.values():
                        if sae.uses_unit_norm_decoder:
                            sae.remove_gradient_parallel_to_decoder_()
                    acc.unscale_gradients()  # once: fp16's scaler refuses to unscale the one optimizer twice a step
                    for name, sae in self.saes.items():  # per SAE: one's large gradient must not shrink another's
                        self.grad_norms[name] = self._clip_gradients(sae)
                self.optimizer.step()  # steps, and zero_grad zeroes, only once the gradients are synchronised
                self.optimizer.zero_grad(set_to_none=True)
            self._track(outputs, batch_tokens=args.batch_size // args.gradient_accumulation_steps)
        self.step_lr = self.scheduler.get_last_lr()[0]  # the rate this step trained at, before the schedule moves
        self.scheduler.step()
        for sae in self.saes.values():
            if sae.uses_unit_norm_decoder:
                sae.normalize_decoder_()
        step = self.state.step + 1
        if step % args.logging_steps and step != self.schedule.num_steps:
            return None
        self.check_finite()
        return self._metrics(outputs)

    def _clip_gradients(self, sae: SaeModel | CltModel) -> torch.Tensor:
        """Clip `sae`'s gradient to `max_grad_norm` (0: never); returns its norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), self.args.max_grad_norm or math.inf)
        return norm.detach() if isinstance(norm, torch.Tensor) else torch.tensor(norm)

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict:
        """`{name: (output, scaled target)}` of every SAE on its hookpoint's activations in `batch` (the target is
        the input for an SAE, the output hookpoint's activation for a transcoder)."""
        outputs = {}
        for name, wrapped in self.wrapped.items():
            sae, model = self.saes[name], self.trainees[name]
            x = scaled(model.inputs(batch), self.state.scales[name], sae.device)
            target = model.targets(batch)
            if target is not None:
                target = scaled(target, self.state.output_scales[name], sae.device)
            coefficient = sae.config.sparsity_coefficient * self.schedule.sparsity_scale(self.state.step)
            with self.accelerator.autocast():  # the SAE step's precision (`mixed_precision`), prepared or not
                out = model.forward(wrapped, x, target, self.dead_latents(name), coefficient)
            target = x if target is None else target
            finite = torch.stack([torch.isfinite(x).all() & torch.isfinite(target).all(), torch.isfinite(out.loss)])
            bad = self.first_bad[name]
            bad.copy_(torch.where((bad < 0) & ~finite, self.state.step, bad))
            outputs[name] = (out, target)
        return outputs

    def check_finite(self) -> None:
        """Raise if any SAE saw non-finite activations or loss, naming the first such step (one host sync)."""
        for name, bad in self.first_bad.items():
            activations_step, loss_step = bad.tolist()
            if activations_step >= 0 or loss_step >= 0:
                what, step = ("activations", activations_step) if activations_step >= 0 else ("loss", loss_step)
                raise TrainingError(
                    f"Non-finite {what} at step {step} for {self.trainees[name].describe()} ({name}). "
                    f"Training stopped; {resume_advice(self.output_dir)}. Lower the learning rate, or check the "
                    "LM's activations at this hookpoint."
                )

    def _track(self, outputs: dict, batch_tokens: int) -> None:
        """Update the dead-latent counters, on the device, with firings summed over processes."""
        for name, (out, _) in outputs.items():
            fired = self._across_ranks(out.latent_counts, "sum") > 0
            since = self.state.tokens_since_fired[name]
            since.add_(batch_tokens).masked_fill_(fired, 0)
            self.state.ever_fired[name] |= fired

    def _metrics(self, outputs: dict) -> dict[str, float]:
        """This step's metrics of every SAE, moved to the host in one transfer."""
        names, values = [], []
        for name, (out, target) in outputs.items():
            terms = self.trainees[name].metrics(out, target, self.dead_latents(name))
            terms["grad_norm"] = self.grad_norms[name]
            names += [f"{name}/{key}" for key in terms]
            values += [value.detach().float().reshape(()) for value in terms.values()]
        metrics = dict(zip(names, torch.stack(values).tolist()))
        if self.owners:  # every rank logs on the same steps, so all take part in this gather
            metrics = {k: v for part in gather_object([metrics]) for k, v in part.items()}
        metrics["lr"] = self.step_lr
        return metrics

    def _log_start(self) -> None:
        n_params = sum(p.numel() for sae in self.saes.values() for p in sae.parameters())
        logger.info(
            f"Training {len(self.saes)} SAE(s) ({n_params:,} parameters) for {self.schedule.num_steps} steps of "
            f"{self.args.batch_size} tokens on {self.accelerator.num_processes} process(es); "
            f"lr {self.args.learning_rate}, dead after {self.schedule.dead_window:,} tokens.",
            main_process_only=True,
        )

    @property
    def per_rank_weights(self) -> bool:
        """Whether each process holds its own SAE weights (distributed hookpoints, feature shards), which its
        checkpoint then keeps, rather than a copy of rank 0's."""
        return bool(self.owners) or self.shards is not None

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-<step>` (see `checkpoints`): every process takes part."""
        return save_checkpoint(self)

    # ---- results --------------------------------------------------------------------------------

    def trained_saes(self) -> dict[str, SaeModel | CltModel]:
        """Copies of the SAEs that take raw activations (training scale folded in, BatchTopK thresholds averaged)."""
        result = {}
        for name, sae in self.saes.items():
            if sae.config.architecture == "batchtopk":
                sae.threshold.copy_(self._across_ranks(sae.threshold.detach().clone(), "mean"))
            result[name] = self.trainees[name].folded(self.state.scales[name], self.state.output_scales.get(name))
        return result

    def dead_latents(self, name: str) -> torch.Tensor:
        """(num_latents,) bool, (n_layers, num_latents) for a cross-layer transcoder: latents that have not fired for
        the schedule's `dead_window` tokens."""
        return self.state.tokens_since_fired[name] >= self.schedule.dead_window

    def dead_fractions(self) -> dict[str, dict[str, float]]:
        """Training-time dead and never-fired fractions of every SAE (on the main process, with distributed
        hookpoints), as of the end of `train()`."""
        return self.final_dead

    def _dead_fractions(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                # "train_": over training; the held-out `dead_fraction` means never fired on the evaluation tokens.
                "train_dead_fraction": self.dead_latents(name).float().mean().item(),
                "train_never_fired_fraction": (~self.state.ever_fired[name]).float().mean().item(),
            }
            for name in self.saes
        }


_LAUNCH_HELP = (
    "This process was started as one of WORLD_SIZE={launched} but finds {seen}, so every process would train alone "
    "on the same data. Launch with `torchrun --nproc_per_node N scripts/train_sae.py ...` or "
    "`hf-sae train --num_processes N`, and do not create an accelerate state (`PartialState()`) before the trainer."
)


def make_accelerator(args: SaeTrainingArguments) -> Accelerator:
    """The run's Accelerator: gloo on the CPU when there is no GPU (so that `torchrun` starts real processes on any
    machine), a bounded wait for peers, accumulation as asked; refuses a launch it would misread."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and not all(key in os.environ for key in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        raise TrainingError(_LAUNCH_HELP.format(launched=launched, seen="no launcher's rank and rendezvous"))
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))
    if launched == 1:  # a run's precision is its own: a second run in one Python session (a notebook) may change it
        AcceleratorState._reset_state()  # accelerate's own reset; the process state (device, group) is kept
    accelerator = Accelerator(
        cpu=default_device() == "cpu",
        project_dir=args.output_dir,
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        kwargs_handlers=[timeout],
    )
    if launched != accelerator.num_processes:
        seen = f"{accelerator.num_processes} process(es) in accelerate"
        raise TrainingError(_LAUNCH_HELP.format(launched=launched, seen=seen))
    return accelerator


def geometric_median(points: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to `points` (N, d). Robust to outliers.
    Points (N, n_layers, d) get one median per layer, (n_layers, d)."""
    if points.ndim == 3:
        return torch.stack([geometric_median(points[:, layer], iterations) for layer in range(points.shape[1])])
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=-1).clamp_min(1e-8)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() < 1e-6 * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median


def _merge_parts(parts: list) -> tuple[dict[str, SaeModel], dict]:
    """Rebuild the SAEs every rank sent (`gather_to_main`) and merge their dead fractions."""
    saes, dead = {}, {}
    for [(states, fractions)] in parts:
        for name, (config, state) in states.items():
            sae = SaeModel(SaeConfig.from_dict(config))
            sae.load_state_dict(state)
            saes[name] = sae.eval()
        dead |= fractions
    return saes, dead


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
