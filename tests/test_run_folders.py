"""A run's output folder: a run stopped before saving its SAEs is named as incomplete, with the advice that works for
it (resume only from an intact checkpoint); --overwrite_output_dir removes what hf_sae wrote there, and nothing else,
and only once the new run's checks have passed."""

import logging
import shutil
from pathlib import Path

import pytest
from test_training import run_args, tiny_run_inputs  # noqa: F401  (the module-scoped fixture)

from hf_sae.errors import HookpointError, TrainingError
from hf_sae.run_folders import check_output_dir, checkpoint_folders
from hf_sae.runners import train_saes
from hf_sae.training import SaeTrainer


@pytest.fixture(scope="module")
def killed_run(tiny_run_inputs, tmp_path_factory) -> Path:  # noqa: F811
    """The folder of a run that wrote tracker logs and checkpoints (steps 4 and 6 kept), and died before saving."""
    output_dir = tmp_path_factory.mktemp("killed") / "run"
    args = run_args(tiny_run_inputs, output_dir, train_tokens=2048, save_steps=2, report_to="tensorboard")

    def killed(self):
        raise RuntimeError("killed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SaeTrainer, "trained_saes", killed)
        with pytest.raises(RuntimeError, match="killed"):
            train_saes(*args)
    assert [p.name for p in checkpoint_folders(output_dir)] == ["checkpoint-4", "checkpoint-6"]
    return output_dir


def folder_like(killed_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(killed_run, tmp_path / "run"))


def test_a_killed_run_with_an_intact_checkpoint_is_resumed_from_it(killed_run, tiny_run_inputs, tmp_path):  # noqa: F811
    output_dir = folder_like(killed_run, tmp_path)
    args = run_args(tiny_run_inputs, output_dir, train_tokens=2048, save_steps=2)
    with pytest.raises(TrainingError, match=r"holds an incomplete run: no SAEs were saved .*checkpoint-6/.* runs/.*; "
                       r"of these, runs is stale .*--resume_from_checkpoint latest continues it from checkpoint-6; "
                       r"--overwrite_output_dir starts again there"):  # fmt: skip
        check_output_dir(args[-1])
    (output_dir / "checkpoint-6" / "weights_rank0.pt").write_bytes(b"damaged")  # the newest is not intact
    with pytest.raises(TrainingError, match=rf"--resume_from_checkpoint {output_dir}/checkpoint-4 continues it"):
        check_output_dir(args[-1])
    shutil.rmtree(output_dir / "checkpoint-6")
    report = train_saes(*run_args(tiny_run_inputs, output_dir, train_tokens=2048, resume_from_checkpoint="latest"))
    assert report["model.layers.1"]["train_tokens"] == 2048  # the advice works: resumed, and finished


def test_a_killed_run_without_an_intact_checkpoint_is_told_to_start_again(killed_run, tiny_run_inputs, tmp_path):  # noqa: F811
    output_dir = folder_like(killed_run, tmp_path)
    for checkpoint in checkpoint_folders(output_dir):
        (checkpoint / "trainer_state.pt").unlink()
    (output_dir / "checkpoint-8.tmp").mkdir()  # a checkpoint whose write was cut short
    expected = r"incomplete run: .* of these, checkpoint-8.tmp, runs is stale .*No checkpoint there is intact, so it "
    with pytest.raises(TrainingError, match=expected + "cannot be resumed; --overwrite_output_dir") as error:
        check_output_dir(run_args(tiny_run_inputs, output_dir)[-1])
    assert "--resume_from_checkpoint" not in str(error.value)


def test_overwriting_removes_the_previous_runs_files_and_keeps_the_users(killed_run, tiny_run_inputs, tmp_path,  # noqa: F811
                                                                         caplog):  # fmt: skip
    output_dir = folder_like(killed_run, tmp_path)
    [stale_events] = output_dir.glob("runs/run/events.out.tfevents*")  # the condition: the killed run's log
    (output_dir / "notes.txt").write_text("mine")
    (output_dir / "model.layers.2").mkdir()
    (output_dir / "model.layers.2" / "config.json").write_text("{}")  # an SAE folder of the run...
    (output_dir / "model.layers.2" / "plot.png").write_bytes(b"png")  # ...holding a file that is not
    refused = run_args(tiny_run_inputs, output_dir, overwrite_output_dir=True, hookpoints=["model.layers.9"])
    with pytest.raises(HookpointError, match="model.layers.9"):
        train_saes(*refused)
    assert stale_events.exists() and len(checkpoint_folders(output_dir)) == 2  # a refused run deleted nothing
    args = run_args(tiny_run_inputs, output_dir, overwrite_output_dir=True, report_to="tensorboard",
                    train_tokens=2048, eval_tokens=0)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_sae.run_folders"):
        train_saes(*args)
    assert not stale_events.exists() and checkpoint_folders(output_dir) == []
    assert len(list(output_dir.glob("runs/run/events.out.tfevents*"))) == 1  # the new run's
    assert (output_dir / "notes.txt").read_text() == "mine"
    assert (output_dir / "model.layers.2" / "plot.png").read_bytes() == b"png"
    assert not (output_dir / "model.layers.2" / "config.json").exists()
    assert (output_dir / "model.layers.1" / "model.safetensors").exists()  # the new run's SAE
    [message] = [r.getMessage() for r in caplog.records if "--overwrite_output_dir" in r.getMessage()]
    removed = "checkpoint-4/, checkpoint-6/, model.layers.2/config.json, runs/"
    assert f"removed the previous run's {removed} from" in message
    assert "left model.layers.2/plot.png, notes.txt, which hf_sae did not write" in message


def test_a_folder_of_someone_elses_files_is_not_called_a_run(tiny_run_inputs, tmp_path):  # noqa: F811
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match=r"holds files that no hf_sae run wrote \(notes.txt\)\. Choose another "
                       r"--output_dir, or pass --overwrite_output_dir to write the run beside them"):  # fmt: skip
        check_output_dir(run_args(tiny_run_inputs, tmp_path / "run")[-1])
