"""The command group: fast help and version (nothing heavy imported), and every command's help with examples."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from insanesr_dist import __version__
from insanesr_dist.cli import LAZY_COMMANDS, cli

from conftest import run_cli


def test_help_and_version_import_no_heavy_module():
    # The cost that matters is what `insanesr-dist --help` imports; wall time on a shared CI machine is noise.
    probe = ("import sys; from insanesr_dist.cli import cli\n"
             "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'accelerate', 'datasets', 'cv2', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    version = run_cli("insanesr-dist", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"insanesr-dist, version {__version__}"


def test_group_help_lists_every_command_with_a_summary():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    for name in [*LAZY_COMMANDS, "make-demo-data"]:
        assert f"  {name} " in listed, name
    assert "Examples" not in listed and "insanesr-dist export" in result.output


@pytest.mark.parametrize("command", [*LAZY_COMMANDS, "make-demo-data", "bench predict"])
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
