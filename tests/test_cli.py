"""The command group: fast help and version (nothing heavy imported), and every command's help with examples."""

import ast
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from conftest import run_cli
from insanesr_dist import __version__
from insanesr_dist.cli import LAZY_COMMANDS, cli


def loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code`."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_help_and_version_import_no_heavy_module():
    # The cost that matters is what `insanesr-dist --help` imports; wall time on a shared CI machine is noise.
    code = "from insanesr_dist.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass"
    assert loaded_after(code, ("torch", "accelerate", "datasets", "cv2", "numpy")) == []
    version = run_cli("insanesr-dist", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"insanesr-dist, version {__version__}"


def test_settings_import_without_torch():
    # Every command that builds a TrainConfig (check-data, the training CLI's option parsing) pays for what
    # config.py imports: the model's settings, not the model (torch: ~650 MB of RSS with the CUDA build).
    code = (
        "from insanesr_dist.config import TrainConfig\n"
        "from insanesr_dist.model import ModelConfig\n"
        "assert TrainConfig().model == ModelConfig(output_head='residual')"
    )
    assert loaded_after(code, ("torch", "accelerate", "datasets")) == []


def test_group_help_lists_every_command_with_a_summary():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    for name in [*LAZY_COMMANDS, "make-demo-data"]:
        assert f"  {name} " in listed, name
    assert "Examples" not in listed and "insanesr-dist export" in result.output


# `bench` hands its arguments to the checkout's benchmarks/bench.py, in a process of its own:
# tests/benchmarks/test_bench.py checks its help and options.
@pytest.mark.parametrize("command", [*(name for name in LAZY_COMMANDS if name != "bench"), "make-demo-data"])
def test_every_command_help_has_examples(command):
    result = CliRunner().invoke(cli, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {command}" in result.output or f"Usage: insanesr-dist {command}" in result.output
    assert "Example" in result.output and "insanesr" in result.output.split("Example")[1]
    # Every option says what it does.
    group, ctx = cli, cli.make_context("insanesr-dist", ["--help"], resilient_parsing=True)
    for word in command.split():
        group = group.get_command(ctx, word)
    undocumented = [p.name for p in group.params if isinstance(p, click.Option) and not p.help]
    assert not undocumented, undocumented


def test_a_user_error_is_one_error_line_in_parsing_and_running():
    from insanesr_dist.commands import Command
    from insanesr_dist.errors import UserError

    assert not isinstance(UserError("x"), click.ClickException)  # the library's error knows nothing of click

    def check(ctx, param, value):
        if value == "bad":
            raise UserError(f"{value}: rejected while parsing")
        return value

    @click.command(cls=Command)
    @click.option("--path", callback=check)
    def toy(path):
        raise UserError(f"{path}: rejected while running")

    for args, message in [
        (["--path", "bad"], "bad: rejected while parsing"),
        (["--path", "p"], "p: rejected while running"),
    ]:
        result = CliRunner().invoke(toy, args)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")


def test_every_command_maps_user_errors_when_run_alone():
    # Each command (not only the group) maps UserError, so `python -m insanesr_dist.train`, accelerate launch and
    # a CliRunner on the command itself show one line too.
    from insanesr_dist.commands import Command, Group

    ctx = cli.make_context("insanesr-dist", ["--help"], resilient_parsing=True)
    for name in [*LAZY_COMMANDS, "make-demo-data"]:
        command = cli.get_command(ctx, name)
        assert isinstance(command, (Command, Group)), name
        for sub in getattr(command, "commands", {}).values():
            assert isinstance(sub, Command), f"{name} {sub.name}"


@pytest.mark.parametrize("entry", [["insanesr-dist", "predict"], [sys.executable, "-m", "insanesr_dist.predict"]])
def test_a_user_error_from_a_real_command_is_one_line(entry, tmp_path):
    result = run_cli(
        *entry,
        "--checkpoint",
        str(tmp_path / "missing.safetensors"),
        "--input",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"Error: {tmp_path / 'missing.safetensors'}: weights file not found"]
