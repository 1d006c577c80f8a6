"""Where a training run's metrics go (`--report_to`): the hyperparameters once, each logging step's metrics, and at
the end the held-out report with each SAE's firing-density histogram. Only the main process writes.

    RunTrackers   start (hyperparameters) -> log (a step's metrics) -> log_report (held-out) -> end
"""

import json

import torch
from accelerate import Accelerator

from .arguments import SaeTrainingArguments


class RunTrackers:
    """The run's trackers, through accelerate's (`Accelerator(log_with=...)`)."""

    def __init__(self, accelerator: Accelerator, args: SaeTrainingArguments, hparams: dict):
        self.accelerator, self.args = accelerator, args
        if accelerator.is_main_process and args.report_to != "none":
            accelerator.init_trackers("hf_sae", config=loggable(hparams))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.accelerator.log(metrics, step=step)

    def log_report(self, report: dict[str, dict], histograms: dict[str, dict] | None, step: int) -> None:
        """The held-out report as scalars at the last step, and each firing-density histogram where the tracker
        takes one (TensorBoard)."""
        acc = self.accelerator
        scalars = {f"{name}/heldout_{k}": v for name, m in report.items() for k, v in m.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        acc.log(scalars, step=step)
        if not (acc.is_main_process and histograms and "tensorboard" in str(self.args.report_to)):
            return
        writer = acc.get_tracker("tensorboard", unwrap=True)
        for name, histogram in histograms.items():
            edges, counts = histogram["log10_frequency_bin_edges"], histogram["counts"]
            centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
            values = torch.repeat_interleave(torch.tensor(centres), torch.tensor(counts))
            if values.numel():
                writer.add_histogram(f"{name}/heldout_log10_firing_frequency", values, step)

    def end(self) -> None:
        """Close the trackers (and accelerate's process group): the last call of a run, after every collective."""
        self.accelerator.end_training()


def loggable(config: dict) -> dict:
    """Hyperparameters as trackers take them: unset ones left out (not the string 'null'), lists as JSON."""
    return {
        key: value if isinstance(value, int | float | str | bool) else json.dumps(value)
        for key, value in config.items()
        if value is not None
    }
