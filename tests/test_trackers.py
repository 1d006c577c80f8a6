"""Trackers: one run per configuration, with that configuration's hyperparameters and unprefixed tags, in TensorBoard
and in W&B (offline); a TensorBoard run per configuration of a real sweep on the tiny model."""

import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from test_training import run_args, tiny_run_inputs  # noqa: F401  (the module-scoped fixture)

from hf_sae.arguments import SaeTrainingArguments
from hf_sae.runners import train_saes
from hf_sae.schedules import Schedule
from hf_sae.trackers import RunTrackers, TrackedRun

SWEEP = "[{k: 2, name: narrow}, {k: 6, learning_rate: 0.004, name: wide}]"


def events_of(folder: Path) -> EventAccumulator:
    [event_file] = folder.glob("events.out.tfevents*")  # one run, one file: no sub-run for the hyperparameters
    events = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def hparams_of(events: EventAccumulator) -> dict:
    """The hyperparameters TensorBoard's HParams view shows for the run (its session start info)."""
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {
        key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for key, value in values.items()
    }


def test_each_configuration_of_a_sweep_is_a_tensorboard_run_of_its_own(tiny_run_inputs, tmp_path):  # noqa: F811
    args = run_args(tiny_run_inputs, tmp_path / "run", sweep=SWEEP, report_to="tensorboard", train_tokens=2048,
                    logging_steps=2, eval_tokens=1000)  # fmt: skip
    report = train_saes(*args)
    folders = sorted(p.parent for p in (tmp_path / "run").rglob("events.out.tfevents*"))
    assert [p.relative_to(tmp_path / "run") for p in folders] == [Path("runs/run/narrow"), Path("runs/run/wide")]
    training, steps = args[-1], Schedule(args[-1]).num_steps
    for name, k, rate in (("narrow", 2, 1e-3), ("wide", 6, 4e-3)):
        events = events_of(tmp_path / "run" / "runs" / "run" / name)
        tags = set(events.Tags()["scalars"])
        assert {"loss", "fvu", "l0", "dead_fraction", "lr", "tokens_per_second", "heldout_fvu"} <= tags
        assert not [tag for tag in tags if "/" in tag]  # one SAE per configuration: nothing prefixed
        sae = report[f"{name}/model.layers.1"]
        assert events.Scalars("heldout_fvu")[-1].value == pytest.approx(sae["fvu"])
        assert events.Scalars("l0")[-1].value == pytest.approx(k, abs=1e-6)  # TopK: exactly k latents a token
        for event in events.Scalars("lr"):  # the configuration's own rate, on the run's schedule
            assert event.value == pytest.approx(rate * Schedule(training).lr_lambda(event.step - 1))
        assert [e.step for e in events.Scalars("loss")] == list(range(2, steps + 1, 2))
        assert events.Histograms("heldout_log10_firing_frequency")[-1].histogram_value.num > 0
        recorded = hparams_of(events)
        assert (recorded["k"], recorded["learning_rate"], recorded["num_latents"]) == (k, rate, sae["num_latents"])
        assert recorded["architecture"] == "topk" and "sweep" not in recorded  # resolved, not the sweep's text
        on_disk = yaml.safe_load((tmp_path / "run" / "runs" / "run" / name / "hparams.yml").read_text())
        assert (on_disk["k"], on_disk["learning_rate"]) == (k, rate)


def tracked(tmp_path: Path, report_to: str, hookpoints: list[str]) -> RunTrackers:
    """Trackers of a two-configuration sweep at `hookpoints`, on a main process, without training."""
    saes = {f"{name}/{h}": SimpleNamespace(config=SimpleNamespace(k=k, num_latents=96, architecture="topk"))
            for name, k in (("narrow", 2), ("wide", 6)) for h in hookpoints}  # fmt: skip
    runs = [TrackedRun.of(name, {"k": k, "learning_rate": rate, "hookpoints": hookpoints}, [f"{name}/{h}" for h in
            hookpoints], rate) for name, k, rate in (("narrow", 2, 1e-3), ("wide", 6, 4e-3))]  # fmt: skip
    args = SaeTrainingArguments(output_dir=str(tmp_path / "out"), report_to=report_to)
    return RunTrackers(SimpleNamespace(is_main_process=True), args, saes, runs)


def test_several_hookpoints_of_one_configuration_are_told_apart_by_hookpoint(tmp_path):
    trackers = tracked(tmp_path, "tensorboard", ["model.layers.1", "model.layers.2"])
    losses = {"narrow/model.layers.1/loss": 1.0, "narrow/model.layers.2/loss": 2.0, "wide/model.layers.1/loss": 3.0,
              "wide/model.layers.2/loss": 4.0}  # fmt: skip
    per_layer = {"narrow/model.layers.1/layer_0/fvu": 0.5}  # a term with '/' of its own (a cross-layer transcoder's)
    trackers.log(losses | per_layer | {"lr": 5e-4, "tokens_per_second": 7.0}, step=1)
    trackers.end()
    narrow, wide = (events_of(tmp_path / "out" / "runs" / "out" / name) for name in ("narrow", "wide"))
    tags = {"model.layers.1/loss", "model.layers.2/loss", "lr", "tokens_per_second"}
    assert set(narrow.Tags()["scalars"]) == tags | {"model.layers.1/layer_0/fvu"}
    assert set(wide.Tags()["scalars"]) == tags
    for events, losses, lr in ((narrow, (1.0, 2.0), 5e-4), (wide, (3.0, 4.0), 2e-3)):  # wide's rate is 4 times
        assert (
            events.Scalars("model.layers.1/loss")[0].value,
            events.Scalars("model.layers.2/loss")[0].value,
        ) == losses
        assert events.Scalars("lr")[0].value == pytest.approx(lr)
        assert events.Scalars("tokens_per_second")[0].value == 7.0


def test_wandb_offline_gets_one_run_per_configuration_with_its_own_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trackers = tracked(tmp_path, "wandb", ["model.layers.1"])
    for step in (1, 2):
        trackers.log({"narrow/model.layers.1/loss": 1.0 / step, "wide/model.layers.1/loss": 3.0 / step, "lr": 1e-3},
                     step=step)  # fmt: skip
    histogram = {"log10_frequency_bin_edges": [-3.0, -2.0, -1.0], "counts": [5, 7]}
    report = {"narrow/model.layers.1": {"fvu": 0.25}, "wide/model.layers.1": {"fvu": 0.5}}
    trackers.log_report(report, {name: histogram for name in report}, step=2)
    trackers.end()
    runs = sorted((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    seen = {}
    for run in runs:
        config, history = wandb_run(run)
        seen[config["k"]] = (config["learning_rate"], config["name"], history[1]["loss"], history[2]["heldout_fvu"])
        assert history[2]["heldout_log10_firing_frequency"]["values"] == [5, 7]
    # each run its own config, name and unprefixed metrics
    assert seen == {2: (1e-3, "out/narrow", 1.0, 0.25), 6: (4e-3, "out/wide", 3.0, 0.5)}


def wandb_run(path: Path) -> tuple[dict, dict[int, dict]]:
    """`(config, {step: logged values})` of an offline W&B run, once its file is complete (W&B's service may still be
    writing it when `finish` returns: read it until its exit record is there)."""
    for _ in range(600):
        records = wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        time.sleep(0.1)
    config, history = {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config comes with the run, or in updates after it
            updates = record.run.config.update if kind == "run" else record.config.update
            config |= {item.key: json.loads(item.value_json) for item in updates}
            config |= {"name": record.run.display_name} if kind == "run" else {}
        elif kind == "history":
            row = {}
            for item in record.history.item:
                _nest(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            history.setdefault(row["_step"], {}).update(row)  # `history.step` is not always set
    return config, history


def wandb_records(path: Path) -> list:
    """The records of a W&B run file: a LevelDB-style log (32 KiB blocks of records, each a 7-byte header, then a
    piece of a `Record` protobuf) after a 7-byte W&B header."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, position, piece, block, records = path.read_bytes(), 7, b"", 32768, []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        piece, position = piece + data[position + 7 : position + 7 + length], position + 7 + length
        if kind in (1, 4) and position <= len(data):  # a whole record, or its last piece
            records.append(Record.FromString(piece))
            piece = b""
    return records


def _nest(row: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        row = row.setdefault(key, {})
    row[keys[-1]] = value


def test_only_the_main_process_writes(tmp_path):
    args = SaeTrainingArguments(output_dir=str(tmp_path / "out"), report_to="tensorboard")
    saes = {"model.layers.1": SimpleNamespace(config=SimpleNamespace(k=2))}
    trackers = RunTrackers(SimpleNamespace(is_main_process=False), args, saes,
                           [TrackedRun.of(None, {"k": 2}, ["model.layers.1"], 1e-3)])  # fmt: skip
    trackers.log({"model.layers.1/loss": 1.0, "lr": 1e-3}, step=1)
    trackers.end()
    assert not (tmp_path / "out").exists()
