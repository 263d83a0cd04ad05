"""The shipped accelerate configs: read by accelerate's own loader, resolved by `accelerate launch`'s own
argument handling (no GPU needed for that), and the CPU one run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

from conftest import TINY, run_cli
from insanesr_dist.training.precision import native_bf16

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"

# name -> (distributed type, processes, mixed precision, use_cpu, machines)
EXPECTED = {
    "cpu.yaml": (DistributedType.NO, 1, None, True, 1),  # precision left to the trainer (auto)
    "single_gpu.yaml": (DistributedType.NO, 1, None, False, 1),  # precision left to the trainer (auto)
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, -1, None, False, 1),
    "multi_gpu_bf16.yaml": (DistributedType.MULTI_GPU, -1, "bf16", False, 1),
    "multi_node.yaml": (DistributedType.MULTI_GPU, -1, None, False, 2),
}


def test_every_config_is_listed_here():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    path = CONFIGS / name
    config = load_config_from_file(str(path))  # also rejects unknown keys
    assert isinstance(config, ClusterConfig)
    distributed, processes, precision, use_cpu, machines = EXPECTED[name]
    assert config.distributed_type == distributed
    assert config.num_processes == processes  # -1: `accelerate launch` insists on --num_processes
    assert config.mixed_precision == precision
    assert config.use_cpu is use_cpu
    assert config.num_machines == machines
    assert config.dynamo_config == {}
    # The header says when to use the file and how, with a command that names this very file.
    header = path.read_text().split("\ncompute_environment:")[0]
    assert f"accelerate launch --config_file accelerate_configs/{name}" in header
    assert "-m insanesr_dist.train" in header


def _resolve(*argv: str):
    """What `accelerate launch` makes of a command line, up to the environment its workers get."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args([*argv, "-m", "insanesr_dist.train"])
    args, _, _ = _validate_launch_command(args)
    return args, prepare_multi_gpu_env(args)


# How each config is launched for real: the flags the sbatch scripts (and the headers) add to it.
LAUNCH_FLAGS = {
    "cpu.yaml": [],
    "single_gpu.yaml": [],
    "multi_gpu.yaml": ["--num_processes", "4", "--main_process_port", "0"],
    "multi_gpu_bf16.yaml": ["--num_processes", "4", "--main_process_port", "0"],
    "multi_node.yaml": [
        "--multi_gpu",
        "--num_machines",
        "2",
        "--machine_rank",
        "1",
        "--num_processes",
        "2",
        "--main_process_ip",
        "head-node",
        "--main_process_port",
        "29555",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_keeps_the_visible_gpus_of_the_job(name, monkeypatch):
    """A job's CUDA_VISIBLE_DEVICES (SLURM sets it on nodes without device cgroups) must reach the training:
    `gpu_ids` other than `all` in a config makes `accelerate launch` overwrite it (GPU 0 for a job given GPU 3)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / name), *LAUNCH_FLAGS[name], "-m", "insanesr_dist.train"]
    )
    args, _, _ = _validate_launch_command(args)
    # launch_command's choice of launcher for these configs: torchrun for --multi_gpu, else the simple one.
    env = prepare_multi_gpu_env(args) if args.multi_gpu else prepare_simple_launcher_cmd_env(args)[1]
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


def test_multi_gpu_config_resolves_to_one_process_per_gpu():
    args, env = _resolve(
        "--config_file", str(CONFIGS / "multi_gpu.yaml"), "--num_processes", "4", "--main_process_port", "0"
    )
    assert args.multi_gpu and args.nproc_per_node == "4"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # not said: the trainer's auto decides
    args, env = _resolve(
        "--config_file", str(CONFIGS / "multi_gpu_bf16.yaml"), "--num_processes", "8", "--main_process_port", "0"
    )
    assert args.nproc_per_node == "8" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_multi_gpu_config_demands_num_processes():
    with pytest.raises(ValueError, match="--num_processes"):
        _resolve("--config_file", str(CONFIGS / "multi_gpu.yaml"))


def test_multi_node_template_takes_ranks_and_address_from_the_command_line():
    # Machine 2 of 4 with 8 GPUs each, as slurm_multi_node.sbatch launches it.
    args, env = _resolve(
        "--config_file",
        str(CONFIGS / "multi_node.yaml"),
        "--multi_gpu",
        "--num_machines",
        "4",
        "--machine_rank",
        "2",
        "--num_processes",
        "32",
        "--main_process_ip",
        "head-node",
        "--main_process_port",
        "29555",
    )
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("4", 2, "8")
    assert args.rdzv_endpoint == "head-node:29555" and args.rdzv_backend == "static"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # not said: the trainer's auto decides


@pytest.mark.slow
def test_cpu_config_trains_for_real(pair_folder, tmp_path):
    out = tmp_path / "cpu"
    result = run_cli(
        "accelerate",
        "launch",
        "--config_file",
        str(CONFIGS / "cpu.yaml"),
        "-m",
        "insanesr_dist.train",
        "--data",
        str(pair_folder),
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--output-dir",
        str(out),
        *TINY,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # The config leaves precision to the trainer: bf16 where the CPU has it natively.
    assert f"1 process(es) on cpu, precision {'bf16' if native_bf16(cpu=True) else 'no'}" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2]
    assert (out / "latest.safetensors").is_file() and (out / "best.safetensors").is_file()


# ---- the sbatch scripts' choice of config and flags, per GPU count, with stand-ins for srun and accelerate

FAKE_SRUN = r"""#!/bin/bash
# Run the task command once per node, as srun would, with that node's SLURM_NODEID.
nodes=1
while [[ "$1" == --* ]]; do [[ "$1" == --nodes=* ]] && nodes=${1#--nodes=}; shift; done
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i "$@" || exit; done
"""
FAKE_ACCELERATE = r"""#!/bin/bash
# Print the arguments, and whether SIGUSR1 is ignored (bit 10 of SigIgn), as one JSON line.
ignored=$(( 0x$(awk '/^SigIgn/ {print $2}' /proc/$$/status) >> 9 & 1 ))
python3 -c 'import json, sys; print(json.dumps({"usr1_ignored": sys.argv[1] == "1", "argv": sys.argv[2:]}))' \
    "$ignored" "$@"
"""
FAKE_SCONTROL = "#!/bin/bash\n[[ \"$1 $2\" == 'show hostnames' ]] && printf 'gpu-a\\ngpu-b\\n'\n"
# torch's GPU count as FAKE_GPUS says (this machine has no GPU); anything else goes to the real interpreter.
FAKE_PYTHON = f"""#!/bin/bash
if [[ "$*" == *torch.cuda.device_count* ]]; then echo "$FAKE_GPUS"; exit; fi
exec {sys.executable} "$@"
"""


def run_sbatch_script(
    script: str,
    tmp_path: Path,
    nodes: int,
    *args: str,
    visible_gpus: int = 8,
    cwd: Path | None = None,
    ok: bool = True,
    **knobs: str,
) -> list[dict] | subprocess.CompletedProcess:
    """Run a launch/ script as SLURM would on the batch node (with stand-ins for srun, accelerate, scontrol and
    torch's GPU count): the JSON lines of the `accelerate launch` calls, or, with `ok=False`, the failed result."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fakes = {"srun": FAKE_SRUN, "accelerate": FAKE_ACCELERATE, "scontrol": FAKE_SCONTROL, "python": FAKE_PYTHON}
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VENV": "",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_CPUS_ON_NODE": "16",
        "FAKE_GPUS": str(visible_gpus),
        **knobs,
    }
    env.pop("SLURM_SUBMIT_DIR", None)
    result = subprocess.run(
        ["bash", str(CONFIGS.parent / "launch" / script), *args],
        cwd=cwd or CONFIGS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not ok:
        return result
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_multi_node_script_launches_one_accelerate_per_node(tmp_path):
    tasks = run_sbatch_script(
        "slurm_multi_node.sbatch",
        tmp_path,
        nodes=2,
        GPUS_PER_NODE="4",
        DATA="/d",
        OUTPUT_DIR="/o",
        EPOCHS="3",
        TRAIN_ARGS="--batch-size 32 --lr 2e-4",
    )
    assert len(tasks) == 2
    for rank, task in enumerate(tasks):
        assert task["usr1_ignored"]  # the launcher must survive --signal=USR1
        argv = " ".join(task["argv"])
        assert argv.startswith(f"launch --machine_rank {rank} --config_file {CONFIGS}/multi_node.yaml --multi_gpu ")
        assert (
            "--num_machines 2 --num_processes 8 --main_process_ip gpu-a --main_process_port 24242 --dynamo_backend no "
        ) in argv and "--mixed_precision" not in argv
        assert argv.endswith("-m insanesr_dist.train --output-dir /o --epochs 3 --data /d --batch-size 32 --lr 2e-4")


def test_multi_node_script_on_cpu_nodes_runs_one_gloo_process_per_node(tmp_path):
    (task, _) = run_sbatch_script("slurm_multi_node.sbatch", tmp_path, nodes=2, GPUS_PER_NODE="0")
    argv = " ".join(task["argv"])
    assert "--multi_gpu --num_machines 2 --num_processes 2 " in argv and "--mixed_precision no" in argv
    # Defaults: the demo data, by steps (validation, submission and checkpoint every 1000 steps).
    assert "--data" not in argv and argv.endswith(
        "--output-dir runs/slurm-4242 --max-steps 20000 --epochs 20000 --val-every 20000 --submit-every 20000 "
        "--val-every-steps 1000 --submit-every-steps 1000 --checkpoint-every 1000"
    )


@pytest.mark.parametrize(
    "gpus, cpu_processes, expected",
    [
        ("8", "1", f"--config_file {CONFIGS}/multi_gpu.yaml --num_processes 8 "),
        ("", "1", f"--config_file {CONFIGS}/multi_gpu.yaml --num_processes 8 "),  # all the GPUs the job sees
        ("1", "1", f"--config_file {CONFIGS}/single_gpu.yaml --main_process_port"),
        ("0", "1", f"--config_file {CONFIGS}/cpu.yaml --main_process_port"),
        ("0", "2", f"--config_file {CONFIGS}/cpu.yaml --multi_gpu --num_processes 2 "),
    ],
)
def test_single_node_script_picks_the_config_for_the_node(tmp_path, gpus, cpu_processes, expected):
    (task,) = run_sbatch_script(
        "slurm_single_node.sbatch", tmp_path, nodes=1, GPUS_PER_NODE=gpus, CPU_PROCESSES=cpu_processes
    )
    assert task["usr1_ignored"]
    assert " ".join(task["argv"]).startswith("launch " + expected)


@pytest.mark.parametrize("script", ["slurm_single_node.sbatch", "slurm_multi_node.sbatch"])
@pytest.mark.parametrize("gpus_per_node", ["", "4"])
def test_script_refuses_a_job_that_sees_no_gpu(tmp_path, script, gpus_per_node):
    """A site that hands out GPUs only on request gives none to a job that forgot to ask: one line, no training."""
    result = run_sbatch_script(script, tmp_path, 2, visible_gpus=0, ok=False, GPUS_PER_NODE=gpus_per_node)
    assert result.returncode == 1
    assert not result.stdout.strip(), result.stdout  # neither the start line nor any `accelerate launch`
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: job 4242 sees no GPU on ") and "--gpus-per-node=N, --gres=gpu:N" in line
    assert "GPUS_PER_NODE=0" in line


def test_script_refuses_more_gpus_per_node_than_the_job_sees(tmp_path):
    result = run_sbatch_script("slurm_multi_node.sbatch", tmp_path, 2, visible_gpus=4, ok=False, GPUS_PER_NODE="8")
    assert result.returncode == 1 and not result.stdout.strip()
    assert result.stderr.startswith("Error: GPUS_PER_NODE=8, but job 4242 sees only 4 GPU(s)")


@pytest.mark.parametrize("script", ["slurm_single_node.sbatch", "slurm_multi_node.sbatch"])
def test_script_from_another_directory_finds_the_configs_and_passes_its_arguments_on(tmp_path, script):
    """`sbatch path/to/SCRIPT --epochs 5 ...` from anywhere: the configs of the imported package, and the
    arguments after the script last, so they win over the knobs' options."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tasks = run_sbatch_script(
        script,
        tmp_path,
        2,
        "--epochs",
        "5",
        "--data",
        "/my data",
        cwd=elsewhere,
        visible_gpus=1,
        EPOCHS="3",
        DATA="/d",
        TRAIN_ARGS="--batch-size 32",
    )
    for task in tasks:
        argv = task["argv"]
        assert argv[argv.index("--config_file") + 1].startswith(f"{CONFIGS}/")
        assert argv[argv.index("insanesr_dist.train") + 1 :] == [
            "--output-dir",
            "runs/slurm-4242",
            "--epochs",
            "3",
            "--data",
            "/d",
            "--batch-size",
            "32",
            "--epochs",
            "5",
            "--data",
            "/my data",
        ]


def test_script_takes_the_configs_folder_from_the_knob(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (task,) = run_sbatch_script(
        "slurm_single_node.sbatch", tmp_path, 1, visible_gpus=1, ACCELERATE_CONFIG_DIR=str(mine)
    )
    assert task["argv"][1:3] == ["--config_file", f"{mine}/single_gpu.yaml"]
