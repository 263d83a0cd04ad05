"""How a training process runs: device, precision and waits, read from real `accelerate launch` processes."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import NO_WORKERS, TINY, accelerate_launch, assert_one_line_error, run_cli, train_script
from insanesr_dist.training import precision, runtime

CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"

PROBE = """
import json
from insanesr_dist.training import precision, runtime
print("PROBE", json.dumps({"precision": precision.launch_precision(), "cpu": runtime.wants_cpu()}))
"""


def probes(tmp_path: Path, *launches: list[str]) -> list[dict]:
    """What the probe script says under `accelerate launch` with each of `launches`' options. The launches are
    separate one-process runs that share nothing but the script, so they run at the same time."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)

    def probe(launch_args: list[str]) -> dict:
        result = run_cli("accelerate", "launch", *launch_args, str(script), timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith("PROBE "))
        return json.loads(line[len("PROBE ") :])

    with ThreadPoolExecutor(len(launches)) as pool:
        return list(pool.map(probe, launches))


@pytest.mark.slow
def test_only_an_explicit_float32_request_is_float32(tmp_path):
    """`accelerate launch` exports ACCELERATE_MIXED_PRECISION=no whether or not anyone asked for float32;
    `auto` must tell the two apart, as it cannot on the variable alone."""
    fp32_config = tmp_path / "fp32.yaml"
    fp32_config.write_text((CONFIGS / "cpu.yaml").read_text() + "mixed_precision: 'no'\n")
    single = ["--num_processes", "1", "--dynamo_backend", "no"]
    unsaid, flag_no, flag_bf16, config_no, ours = probes(
        tmp_path,
        single,
        [*single, "--mixed_precision", "no"],
        [*single, "--mixed_precision", "bf16"],
        ["--config_file", str(fp32_config)],
        ["--config_file", str(CONFIGS / "cpu.yaml")],
    )
    assert unsaid["precision"] is None  # nothing said: auto decides
    assert flag_no["precision"] == "no"  # the flag (the sbatch knob)
    assert flag_bf16["precision"] == "bf16"
    assert config_no["precision"] == "no"  # a config file saying 'no'
    assert ours == {"precision": None, "cpu": True}  # ours leaves it to the trainer


def test_resolving_an_explicit_float32_request_gives_float32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda cpu: True)
    monkeypatch.setattr(precision, "launch_precision", lambda: "no")
    assert precision.resolve_precision("auto", cpu=True) == ("no", None)
    monkeypatch.setattr(precision, "launch_precision", lambda: None)
    assert precision.resolve_precision("auto", cpu=True)[0] == "bf16"


@pytest.mark.parametrize("config, cpu", [("cpu.yaml", True), ("single_gpu.yaml", False)])
def test_the_accelerate_config_decides_cpu_even_on_a_gpu_host(monkeypatch, config, cpu):
    """accelerate_configs/cpu.yaml on a machine with a GPU: the environment accelerate prepares for it must make
    the trainer choose the CPU (the process state is created before accelerate would read it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), "-m", "insanesr_dist.train"])
    args, *_ = _validate_launch_command(args)
    _, env = prepare_simple_launcher_cmd_env(args)
    monkeypatch.setenv("ACCELERATE_USE_CPU", env["ACCELERATE_USE_CPU"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert runtime.wants_cpu() is cpu


SLOW_RANK_0 = """
import time
class Custom(Trainer):
    def load_data(self):
        with self.accelerator.main_process_first():
            if self.accelerator.is_main_process:
                time.sleep(6)  # a first run preparing a large dataset, while rank 1 waits in a barrier
        return super().load_data()
"""


@pytest.mark.slow
def test_a_long_rank_0_preparation_needs_a_long_enough_dist_timeout(pair_folder, tmp_path):
    script = train_script(SLOW_RANK_0)

    def launch(timeout_s: int, out: str):
        return run_cli(
            *accelerate_launch(2, target=(str(script),)),
            "--data",
            str(pair_folder),
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / out),
            "--dist-timeout",
            str(timeout_s),
            *TINY,
            *NO_WORKERS,
            timeout=300,
        )

    short = launch(2, "short")  # 4 s less than rank 0's wait: room for the ranks' uneven starts
    assert short.returncode != 0
    lines = [line for line in short.stderr.splitlines() if line.startswith("Error:") and "--dist-timeout" in line]
    assert lines and "rank 1: waited longer than --dist-timeout 2 s" in lines[0], short.stderr[-3000:]
    # (torchrun then prints its own ChildFailedError traceback; none comes from the toolkit's code)
    assert not [
        line for line in short.stderr.splitlines() if line.lstrip().startswith('File "') and "insanesr_dist" in line
    ], short.stderr[-3000:]
    long = launch(120, "long")
    assert long.returncode == 0, long.stderr[-3000:]
    assert (tmp_path / "long" / "latest.safetensors").is_file()


@pytest.mark.slow
def test_a_stuck_dataloader_worker_ends_the_run_with_one_line(pair_folder, tmp_path):
    # The patch reaches the worker: it starts from a fork server that imports the patched script.
    stuck = (
        "import time\nfrom insanesr_dist.data.loaders import TrainPairs\n"
        "TrainPairs.__getitem__ = lambda self, index: time.sleep(3600)\n"
    )
    result = run_cli(
        sys.executable,
        str(train_script(stuck)),
        "--data",
        str(pair_folder),
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        "--worker-timeout",
        "5",
        *TINY,
        timeout=300,
    )
    assert_one_line_error(result, "DataLoader worker produced no batch for 5 s (--worker-timeout)")
