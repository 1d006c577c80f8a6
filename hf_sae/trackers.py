"""Where a training run's metrics go (`--report_to`): one tracker run per configuration that it trains (a plain run
is one configuration; each entry of a sweep is one), holding that configuration's hyperparameters and its SAEs'
metrics under the same tag names as every other configuration's, so that their curves overlay.

```
<output_dir>/runs/<run>/<configuration>/events.out.tfevents...   TensorBoard: one folder per configuration
<output_dir>/runs/<run>/<configuration>/hparams.yml              with the hyperparameters it trained with
<output_dir>/wandb/...                                           W&B: one run per configuration, grouped by <run>
```

`<run>` is the output folder's name; a plain run's configuration is the run itself (`runs/<run>/`). Only the main
process writes.

    TrackedRun    one configuration: its name, its hyperparameters, its SAEs and their tag prefixes
    RunTrackers   start (hyperparameters) -> log (a step's metrics) -> log_report (held-out) -> end
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from transformers.utils import logging

from .arguments import SaeTrainingArguments
from .layout import write_text

logger = logging.get_logger(__name__)

TENSORBOARD_DIR, WANDB_DIR = "runs", "wandb"  # in the output folder
HPARAMS = "hparams.yml"
# The metrics the TensorBoard HParams dashboard shows beside each configuration's hyperparameters.
SUMMARY_METRICS = ("loss", "fvu", "l0", "dead_fraction", "heldout_fvu", "heldout_l0")


@dataclass(frozen=True)
class TrackedRun:
    """One configuration as the trackers see it. `saes` maps the trainer's name of each of its SAEs to the prefix of
    that SAE's tags: '' where the configuration has one SAE, '<hookpoint>/' where it has several."""

    configuration: str | None  # None: the run's only configuration
    hparams: dict
    saes: dict[str, str]
    learning_rate: float

    @staticmethod
    def of(configuration: str | None, hparams: dict, names: list[str], learning_rate: float) -> "TrackedRun":
        """The run of `names`; where there are several, each SAE's tags start with its name less the configuration."""
        strip = len(configuration) + 1 if configuration else 0
        prefixes = {name: f"{name[strip:]}/" if len(names) > 1 else "" for name in names}
        return TrackedRun(configuration, hparams, prefixes, learning_rate)


class RunTrackers:
    """A writer per configuration (TensorBoard's `SummaryWriter`, or a W&B run) on the main process; nothing on the
    others. Step metrics arrive as the trainer names them (`<sae>/<term>`, plus the run-wide `lr` and
    `tokens_per_second`) and go to their configuration's run without the SAE's name."""

    def __init__(self, accelerator: Accelerator, args: SaeTrainingArguments, saes: dict, runs: list[TrackedRun]):
        """`saes`: this process's SAEs, in the trainer's order; their configs give each configuration's sizes as
        built (`num_latents` from an expansion factor), and the first one's rate is the one the `lr` metric follows."""
        self.runs, self.writers = runs, []
        self.route = {name: (index, prefix) for index, run in enumerate(runs) for name, prefix in run.saes.items()}
        first = next((self.route[name][0] for name in saes if name in self.route), 0)  # a process may hold none
        self.reference_rate = runs[first].learning_rate
        if not accelerator.is_main_process or args.report_to == "none":
            return
        folder = Path(args.output_dir)
        group = folder.absolute().name
        for run in runs:
            hparams = loggable(run.hparams | resolved_sizes(run, saes))
            name = group if run.configuration is None else f"{group}/{run.configuration}"
            self.writers.append(_open(args.report_to, folder, name, group, hparams, run))
        where = folder / (TENSORBOARD_DIR if args.report_to == "tensorboard" else WANDB_DIR)
        logger.info(f"Logging {len(runs)} configuration(s) to {args.report_to} in {where}.")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One step's metrics, each SAE's to its configuration's run; `lr` is each configuration's own rate."""
        if not self.writers:
            return
        per_run = [{} for _ in self.runs]
        for key, value in metrics.items():
            sae, term = self._split(key)
            if sae is not None:
                index, prefix = self.route[sae]
                per_run[index][prefix + term] = value
            else:  # run-wide; the schedule multiplies every configuration's rate by the same factor
                for index, run in enumerate(self.runs):
                    per_run[index][key] = value * run.learning_rate / self.reference_rate if key == "lr" else value
        for writer, values in zip(self.writers, per_run):
            writer.scalars(values, step)

    def _split(self, key: str) -> tuple[str | None, str]:
        """`(sae, term)` of a metric's name, the longest SAE name that starts it (SAE names and terms may both hold
        '/': `wide/model.layers.1/loss`, `clt/layer_3/fvu`); `(None, key)` for a run-wide one."""
        parts = key.split("/")
        for end in range(len(parts) - 1, 0, -1):
            if (sae := "/".join(parts[:end])) in self.route:
                return sae, "/".join(parts[end:])
        return None, key

    def log_report(self, report: dict[str, dict], histograms: dict[str, dict] | None, step: int) -> None:
        """The held-out report as `heldout_<metric>` scalars at the last step, and each SAE's firing-density
        histogram of log10 frequencies."""
        scalars = {f"{name}/heldout_{k}": v for name, m in report.items() for k, v in m.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        self.log(scalars, step)
        for name, histogram in (histograms or {}).items() if self.writers else ():
            index, prefix = self.route[name]
            edges, counts = histogram["log10_frequency_bin_edges"], histogram["counts"]
            if sum(counts):
                self.writers[index].histogram(f"{prefix}heldout_log10_firing_frequency", edges, counts, step)

    def end(self) -> None:
        """Close every writer (W&B: finish its run)."""
        for writer in self.writers:
            writer.close()
        self.writers = []


def resolved_sizes(run: TrackedRun, saes: dict) -> dict:
    """What the configuration's SAEs are, as built (a width resolved from an expansion factor), from the first of
    them that this process holds."""
    config = next((saes[name].config for name in run.saes if name in saes), None)
    keys = ("architecture", "num_latents", "k", "d_in")
    return {key: getattr(config, key) for key in keys if hasattr(config, key)} if config is not None else {}


def loggable(config: dict) -> dict:
    """Hyperparameters as trackers take them: unset ones left out (not the string 'null'), lists as JSON."""
    return {
        key: value if isinstance(value, int | float | str | bool) else json.dumps(value)
        for key, value in config.items()
        if value is not None
    }


def _open(report_to: str, folder: Path, name: str, group: str, hparams: dict, run: TrackedRun):
    """The configuration's writer, with its hyperparameters recorded."""
    if report_to == "wandb":
        return _WandbRun(folder, name, group, hparams)
    metrics = [f"{prefix}{metric}" for prefix in run.saes.values() for metric in SUMMARY_METRICS]
    return _TensorBoardRun(folder / TENSORBOARD_DIR / name, hparams, metrics)


class _TensorBoardRun:
    def __init__(self, log_dir: Path, hparams: dict, metrics: list[str]):
        from torch.utils.tensorboard import SummaryWriter  # optional: checked by --report_to
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.writer = SummaryWriter(log_dir=str(log_dir))
        # In the run's own event file (`add_hparams` would open a sub-run): the HParams view lists each configuration.
        for summary in hparams_summaries(hparams, dict.fromkeys(metrics, 0)):
            self.writer.file_writer.add_summary(summary)
        write_text(log_dir / HPARAMS, yaml.safe_dump(hparams, sort_keys=False))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, edges: list[float], counts: list[int], step: int) -> None:
        """One value per latent that fired, at the centre of its bin."""
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        self.writer.add_histogram(tag, torch.repeat_interleave(torch.tensor(centres), torch.tensor(counts)), step)

    def close(self) -> None:
        self.writer.close()


class _WandbRun:
    def __init__(self, folder: Path, name: str, group: str, hparams: dict):
        import wandb  # optional: checked by --report_to

        self.wandb = wandb
        folder.mkdir(parents=True, exist_ok=True)
        # Several runs in one process: each `init` starts a new one rather than finishing the one before.
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "hf_sae"), name=name, group=group,
                              config=hparams, dir=folder, reinit="create_new")  # fmt: skip

    def scalars(self, values: dict[str, float], step: int) -> None:
        if values:
            self.run.log(values, step=step)

    def histogram(self, tag: str, edges: list[float], counts: list[int], step: int) -> None:
        self.run.log({tag: self.wandb.Histogram(np_histogram=(counts, edges))}, step=step)

    def close(self) -> None:
        self.run.finish()
