"""Real processes (gloo on the CPU): two ranks on one machine, two simulated machines with a c10d rendezvous, a rank
that dies, gradient accumulation, and launches that would be misread. Each multi-process test first proves that two
processes ran: each logs its rank and the world size it saw."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import run_args, tiny_run_inputs  # noqa: F401  (the module-scoped fixture)

from hf_sae import SaeConfig, SaeModel, TrainingError
from hf_sae.activations import ShufflingBuffer
from hf_sae.arguments import SaeTrainingArguments
from hf_sae.distribution import local_launch
from hf_sae.training import SaeTrainer, make_accelerator

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "train_sae.py")
HOOKPOINT = "model.layers.1"
# One process or two, the same global batches: one long document, blocks in order, no shuffling, so the data order is
# identical (rank r reads blocks r, r + 2, ...; one process reads them all, two per step). No latent counts as dead
# within the run, because AuxK normalises by each process's own batch, which no data-parallel run can make equal.
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def common_flags(root: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(root / "lm"),
        "--dataset_name",
        str(root / "one_document.jsonl"),
        "--hookpoints",
        HOOKPOINT,
        "--context_size",
        "32",
        "--k",
        "4",
        "--expansion_factor",
        "4",
        "--train_tokens",
        str(62 * 20),
        "--batch_size",
        "62",
        "--shuffle_buffer_tokens",
        "0",
        "--lm_batch_size",
        "1",
        "--b_dec_init",
        "mean",
        "--outlier_factor",
        "none",
        "--report_to",
        "none",
        "--eval_tokens",
        "0",
        "--lm_dtype",
        "float32",
        "--mixed_precision",  # bf16 steps, which `auto` picks where bf16 is faster, differ with the batch split
        "no",
        "--save_steps",
        "0",
        "--dead_after_tokens",
        "1000000",
    ]


UNRESOLVABLE_HOSTNAME = REPO / "tests" / "fixtures" / "unresolvable_hostname"  # its sitecustomize breaks getfqdn()


def environment() -> dict:
    path = os.pathsep.join(map(str, (REPO, UNRESOLVABLE_HOSTNAME)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    return env


def launch_all(commands: list[list[str]], timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side and wait for all of them. One that hangs past `timeout` fails the test and is
    killed with its whole process group, so that no worker outlives the test holding its ports and cores."""
    launches = [subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True) for command in commands]  # fmt: skip
    try:
        outputs = [launch.communicate(timeout=timeout) for launch in launches]
    finally:
        for launch in launches:
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)
    return [subprocess.CompletedProcess(launch.args, launch.returncode, *output)
            for launch, output in zip(launches, outputs)]  # fmt: skip


def cli_train(flags: list[str], processes: int, out: Path) -> list[str]:
    """`hf-sae train` launching `processes` processes itself (--num_processes), as a user types it."""
    return [sys.executable, "-m", "hf_sae.cli", "train", *flags, "--num_processes", str(processes), "--output_dir",
            str(out)]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ran(output: str, world: int) -> set[int]:
    """The ranks that reported running in a world of `world` processes."""
    return {rank for rank in range(world) if f"Process {rank} of {world} on cpu" in output}


def trained(out: Path) -> SaeModel:
    saved = sorted(p.name for p in out.iterdir() if not p.name.startswith("checkpoint"))
    assert saved == ["README.md", "metrics.json", HOOKPOINT, "training_args.json"]  # saved once, nothing half-written
    return SaeModel.from_pretrained(out / HOOKPOINT)


def assert_same_weights(a: SaeModel, b: SaeModel) -> None:
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, **TOLERANCE)


@pytest.fixture(scope="module")
def one_process(tiny_run_inputs, tmp_path_factory) -> SaeModel:  # noqa: F811
    out = tmp_path_factory.mktemp("p1") / "run"
    command = [sys.executable, SCRIPT, *common_flags(tiny_run_inputs), "--output_dir", str(out)]
    result = launch_all([command])[0]
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, 1) == {0}
    return trained(out)


def test_the_processes_here_see_a_hostname_that_resolves_nowhere():
    probe = "import socket; name = socket.getfqdn(); print(name); socket.getaddrinfo(name, None)"
    result = subprocess.run([sys.executable, "-c", probe], env=environment(), capture_output=True, text=True)
    assert result.stdout.strip() == "unresolvable.invalid"
    assert "socket.gaierror" in result.stderr  # so a launch that advertised the hostname would wait forever


def test_two_processes_on_one_machine_reach_the_weights_of_one(tiny_run_inputs, one_process, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    command = cli_train(common_flags(tiny_run_inputs), 2, out)
    result = launch_all([command])[0]
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, 2) == {0, 1}  # two real processes, each in a world of two
    two = trained(out)
    assert_same_weights(one_process, two)
    assert not torch.equal(two.W_dec, SaeModel(two.config).W_dec)  # it trained


def test_two_machines_with_a_c10d_rendezvous_reach_the_weights_of_one(tiny_run_inputs, one_process, tmp_path):  # noqa: F811
    out, port, launches = tmp_path / "run", free_port(), []
    for node in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),
            "--nproc_per_node",
            "1",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"127.0.0.1:{port}",
            "--rdzv_id",
            "two-machines",
            "--local_addr",  # what each "machine" tells the other; else its hostname, which may not resolve here
            "127.0.0.1",
            SCRIPT,
            *common_flags(tiny_run_inputs),
            "--output_dir",
            str(out),
        ]
        launches.append(command)
    results = launch_all(launches)
    outputs = [result.stderr for result in results]
    assert [result.returncode for result in results] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert [len(ran(output, 2)) for output in outputs] == [1, 1]  # one process per "machine"
    assert ran("".join(outputs), 2) == {0, 1}  # c10d hands out the ranks in arrival order
    assert_same_weights(one_process, trained(out))


def test_a_rank_that_dies_stops_the_run_with_an_error_naming_it(tiny_run_inputs, tmp_path):  # noqa: F811
    driver = tmp_path / "dying.py"
    driver.write_text(
        "import os, sys\n"
        "from hf_sae.training import SaeTrainer\n"
        "original = SaeTrainer.step\n"
        "def step(self, batches):\n"
        "    if self.state.step == 3 and self.accelerator.process_index == 1:\n"
        "        print('rank 1 dies now', file=sys.stderr, flush=True)\n"
        "        os._exit(3)\n"
        "    return original(self, batches)\n"
        "SaeTrainer.step = step\n"
        "from hf_sae.cli import main\n"
        "sys.exit(main(['train', *sys.argv[1:]]))\n"
    )
    command = [
        *local_launch(2),
        str(driver),
        *common_flags(tiny_run_inputs),
        "--output_dir",
        str(tmp_path / "run"),
        "--ddp_timeout",
        "60",
    ]
    result = launch_all([command], timeout=200)[0]
    assert "rank 1 dies now" in result.stderr  # the fault fired
    assert result.returncode != 0
    assert "exitcode  : 3" in result.stderr and "rank      : 1" in result.stderr  # torchrun names the rank
    assert not (tmp_path / "run" / HOOKPOINT).exists()


def test_a_world_size_without_a_launcher_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    args = SaeTrainingArguments(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(TrainingError, match=r"WORLD_SIZE=2 .*torchrun --nproc_per_node N"):
        make_accelerator(args)


def test_two_half_batches_accumulated_equal_one_full_batch():
    torch.manual_seed(0)
    stream = [{HOOKPOINT: torch.randn(64, 24) * 3 + 1} for _ in range(40)]
    config = SaeConfig(d_in=24, num_latents=96, architecture="topk", k=4, hookpoint=HOOKPOINT, auxk_coefficient=0)
    results = []
    for steps, per_call in ((1, 128), (2, 64)):
        sae = SaeModel(config)
        sae.load_state_dict(SaeModel(config).state_dict() if not results else results[0][1])
        initial = {k: v.clone() for k, v in sae.state_dict().items()}
        buffer = ShufflingBuffer(lambda skip: iter(stream[skip:]), batch_size=per_call, capacity=0)
        args = SaeTrainingArguments(
            train_tokens=128 * 10,
            batch_size=128,
            gradient_accumulation_steps=steps,
            report_to="none",
            output_dir="unused",
            b_dec_init="mean",
        )
        trainer = SaeTrainer(args, {HOOKPOINT: sae}, buffer, make_accelerator(args))
        assert trainer.accelerator.gradient_accumulation_steps == steps
        calls = []
        trainer._forward = (lambda f: lambda batch: calls.append(len(batch[HOOKPOINT])) or f(batch))(trainer._forward)
        trainer.train()
        assert calls == [per_call] * (10 * steps)  # the accumulation really split each step
        results.append((sae.state_dict(), initial))
    (full, _), (accumulated, _) = results
    for name, tensor in full.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-4, atol=1e-5)


def test_hookpoints_spread_over_two_processes_match_one_process_training_both(tiny_run_inputs, tmp_path):  # noqa: F811
    both = ["--hookpoints", "model.layers.0", HOOKPOINT, "--save_steps", "10"]  # last flags win
    single = tmp_path / "one"
    command = [sys.executable, SCRIPT, *common_flags(tiny_run_inputs), *both, "--output_dir", str(single)]
    result = launch_all([command])[0]
    assert result.returncode == 0, result.stderr[-3000:]
    spread = tmp_path / "spread"
    command = [sys.executable, "-m", "hf_sae.cli", "train", *common_flags(tiny_run_inputs), *both,
               "--num_processes", "2", "--distribute_hookpoints", "--output_dir", str(spread)]  # fmt: skip
    result = launch_all([command])[0]
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, 2) == {0, 1}
    # Each process holds only the SAE of its own hookpoint, and checkpoints its own.
    assert "Process 0 of 2 trains the SAEs of ['model.layers.0']" in result.stderr
    assert f"Process 1 of 2 trains the SAEs of ['{HOOKPOINT}']" in result.stderr
    assert {p.name for p in (spread / "checkpoint-10").iterdir()} >= {"weights_rank0.pt", "weights_rank1.pt"}
    for hookpoint in ("model.layers.0", HOOKPOINT):
        expected = SaeModel.from_pretrained(single / hookpoint)
        assert_same_weights(expected, SaeModel.from_pretrained(spread / hookpoint))


def test_spreading_fewer_hookpoints_than_processes_is_refused():
    from hf_sae import ArgumentError
    from hf_sae.distribution import hookpoint_owners

    assert hookpoint_owners(["a", "b", "c"], 2) == {"a": 0, "b": 1, "c": 0}
    with pytest.raises(ArgumentError, match=r"each of the 2 processes .* only 1 \(\['a'\]\)"):
        hookpoint_owners(["a"], 2)


def test_two_processes_read_the_text_once_into_a_cache_and_replay_it_as_one(tiny_run_inputs, tmp_path, monkeypatch):  # noqa: F811
    """--epochs without a cache: the main process caches the text while the other waits; both replay it. One process
    then finds the same cache (the same model, hookpoints and text) and trains the same SAE from it."""
    monkeypatch.setenv("HF_SAE_HOME", str(tmp_path / "home"))  # the hf_sae cache the launched processes inherit
    flags = [*common_flags(tiny_run_inputs), "--train_tokens", str(62 * 10), "--epochs", "2"]  # the later flag counts
    two = cli_train(flags, 2, tmp_path / "two")
    result = launch_all([two])[0]
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr, 2) == {0, 1} and result.stderr.count("caching activations to") >= 1
    caches = list((tmp_path / "home" / "activations").iterdir())
    assert len(caches) == 1 and "caches its activations at" in result.stderr  # written once, by one process
    one = [sys.executable, SCRIPT, *flags, "--output_dir", str(tmp_path / "one")]
    result = launch_all([one])[0]
    assert result.returncode == 0 and ran(result.stderr, 1) == {0}, result.stderr[-3000:]
    assert "replays the activations at" in result.stderr and "caching activations to" not in result.stderr
    assert list((tmp_path / "home" / "activations").iterdir()) == caches
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())[HOOKPOINT]
    assert metrics["train_epochs"] == pytest.approx(2, abs=0.1)
    assert_same_weights(trained(tmp_path / "one"), trained(tmp_path / "two"))
