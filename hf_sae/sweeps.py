"""Sweeps: several SAE configurations per hookpoint, all trained on the same activations (one LM forward, or one
cache), each saved in a folder of its own.

A sweep is a list of entries, each a mapping of some of `SWEEP_KEYS`; what an entry leaves out is the run's
flag value. It comes from `--sweep FILE.yaml`, an inline `--sweep '[{k: 16}, {k: 64}]'`, or a `sweep:` list in
the YAML file given to `hf-sae train`:

```yaml
sweep:
  - {k: 16}
  - {k: 64, learning_rate: 3.0e-4}
  - {num_latents: 18432, name: wide}
```

Entry `name` (default: its settings, e.g. `k64-lr0.0003`) is its folder in `--output_dir`, which then holds a
complete run for each entry, `<output_dir>/<name>/<hookpoint>/` with `metrics.json` beside the SAE.

    sweep_runs   the configurations to train, every entry checked before anything expensive
    tracked_runs one tracker run per configuration, with its own hyperparameters
    save_runs    each configuration's SAEs, metrics and arguments, in its folder
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from .arguments import SaeArguments
from .errors import ArgumentError
from .hub import save_saes
from .layout import METRICS, TRAINING_ARGS, folder_name, sae_metrics, write_json
from .run_folders import CHECKPOINT_PREFIX, RUN_FILES, TRACKER_DIRS
from .trackers import TrackedRun

# Each key an entry may set, with the types its value may have.
SWEEP_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "architecture": (str,),
    "k": (int,),
    "num_latents": (int,),
    "expansion_factor": (int, float),
    "sparsity_coefficient": (int, float),
    "learning_rate": (int, float),
}
_SHORT = {"k": "k", "num_latents": "n", "expansion_factor": "x", "sparsity_coefficient": "s", "learning_rate": "lr"}
# What the run itself writes beside the sweep's folders: its checkpoints (`resume_from_checkpoint latest` picks the
# newest `checkpoint-<step>`), reports and arguments, and the trackers' logs.
RUN_NAMES = (f"{CHECKPOINT_PREFIX}*", *RUN_FILES, *TRACKER_DIRS)


@dataclass(frozen=True)
class SweepRun:
    """One configuration of the sweep: its SAEs' arguments and learning rate, and its folder name (None: the only
    configuration of a run without a sweep, whose SAEs go straight into the output folder)."""

    name: str | None
    sae_args: SaeArguments
    learning_rate: float

    def sae_name(self, hookpoint: str) -> str:
        """The trainer's and the report's name for this configuration's SAE at `hookpoint`."""
        return hookpoint if self.name is None else f"{self.name}/{hookpoint}"

    def settings(self, settings: dict) -> dict:
        """The run's `settings` (its argument groups) with this configuration's own SAE arguments and rate."""
        return settings | dataclasses.asdict(self.sae_args) | {"learning_rate": self.learning_rate}


def sweep_runs(sae_args: SaeArguments, learning_rate: float) -> list[SweepRun]:
    """The configurations to train: every entry of `sae_args.sweep` checked (keys, types, values, unique names),
    or the run's own flags alone when there is no sweep."""
    entries = read_sweep(sae_args.sweep)
    if not entries:
        return [SweepRun(None, sae_args, learning_rate)]
    runs = [_run(entry, index, sae_args, learning_rate) for index, entry in enumerate(entries)]
    names = [run.name.lower() for run in runs]  # `Wide` and `wide` are one folder on some file systems
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ArgumentError(f"--sweep has several entries named {duplicates}; give each entry a distinct `name`.")
    return runs


def read_sweep(value) -> list:
    """The entries of `--sweep`: a list already (from a YAML config or Python), a YAML / JSON file, or inline YAML."""
    if value is None or isinstance(value, list):
        return value or []
    text = value if _inline(value) else _read_file(value)
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ArgumentError(f"--sweep {value!r} is neither a file nor a YAML list ({error}).") from None
    if not isinstance(entries, list):
        raise ArgumentError(
            f"--sweep must be a list of configurations (a file, or inline such as '[{{k: 16}}, {{k: 64}}]'); "
            f"{value!r} holds {type(entries).__name__}."
        )
    return entries


def _inline(value: str) -> bool:
    """Inline YAML (a flow list, a block list, several lines) is never taken for a file name: it may be longer than
    any file name can be."""
    return value.lstrip().startswith(("[", "{", "- ")) or "\n" in value


def _read_file(value: str) -> str:
    try:
        return Path(value).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ArgumentError(
            f"--sweep {value!r} is neither a readable YAML file ({getattr(error, 'strerror', None) or error}) nor an "
            "inline list such as '[{k: 16}, {k: 64}]'. Fix the path, or write the list inline."
        ) from None


def _run(entry, index: int, sae_args: SaeArguments, learning_rate: float) -> SweepRun:
    where = f"--sweep entry {index} ({entry!r})"
    if not isinstance(entry, dict):
        raise ArgumentError(f"{where} must be a mapping such as {{k: 16}}; got {type(entry).__name__}.")
    if unknown := sorted(set(map(str, entry)) - set(SWEEP_KEYS)):
        raise ArgumentError(f"{where} has unknown key(s) {unknown}; an entry may set {list(SWEEP_KEYS)}.")
    for key, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, SWEEP_KEYS[key]):
            expected = " or ".join(t.__name__ for t in SWEEP_KEYS[key])
            raise ArgumentError(f"{where}: `{key}` must be {expected}; got {value!r}.")
    values = {key: value for key, value in entry.items() if key not in ("name", "learning_rate")}
    if "expansion_factor" in values and "num_latents" not in values:
        values["num_latents"] = None  # the entry's expansion factor wins over a --num_latents flag
    try:
        run_args = dataclasses.replace(sae_args, sweep=None, **values)  # checked as it is built
    except ArgumentError as error:
        raise ArgumentError(f"{where}: {error}") from None
    rate = entry.get("learning_rate", learning_rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ArgumentError(f"{where}: `learning_rate` must be a number > 0; got {rate!r}.")
    name = entry.get("name") or _default_name(entry, index)
    fix = "Give the entry another `name`: its folder in --output_dir."
    return SweepRun(folder_name(name, f"{where}: `name`", fix, reserved=RUN_NAMES), run_args, float(rate))


def _default_name(entry: dict, index: int) -> str:
    parts = [entry["architecture"]] if "architecture" in entry else []
    parts += [f"{_SHORT[key]}{entry[key]:g}" for key in _SHORT if key in entry]
    return "-".join(parts) or f"sweep{index}"


def tracked_runs(runs: list[SweepRun], hookpoints: list[str], settings: dict) -> list[TrackedRun]:
    """One tracker run per configuration, with its own arguments and its SAEs at `hookpoints` (every process's)."""
    return [TrackedRun.of(run.name, run.settings(settings), [run.sae_name(h) for h in hookpoints], run.learning_rate)
            for run in runs]  # fmt: skip


def save_runs(runs: list[SweepRun], trained: dict, report: dict, out: Path, settings: dict) -> None:
    """Each configuration's SAEs, metrics and arguments (`settings`, the run's): in `out` itself without a sweep,
    else each in `out/<name>`, with every SAE's metrics and the sweep's arguments in `out` too."""
    for run in runs:
        names = {h: name for name in trained if (h := trained[name].config.hookpoint) and run.sae_name(h) == name}
        folder = out if run.name is None else out / run.name
        save_saes({h: trained[name] for h, name in names.items()}, folder,
                  metrics={h: sae_metrics(report[name]) for h, name in names.items()})  # fmt: skip
        if run.name is not None:  # what reproduces this configuration alone
            write_json(folder / METRICS, {h: report[name] for h, name in names.items()})
            write_json(folder / TRAINING_ARGS, run.settings(settings) | {"output_dir": str(folder)})
    write_json(out / METRICS, report)
    write_json(out / TRAINING_ARGS, settings)
