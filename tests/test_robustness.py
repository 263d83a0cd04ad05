"""Issue 6: bad data, bad files and faults give one clear line (or a documented conversion), never an
obscure crash, and never an unreadable `latest`, `best` or CSV."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bad_data import PATCH, make_bad_folder, make_empty_folder
from conftest import NO_WORKERS, TINY, assert_one_line_error, make_pair_folder, run_cli, run_train_script
from insanesr_dist import atomic
from insanesr_dist.data import images, pairs
from insanesr_dist.data.splits import load_splits
from insanesr_dist.errors import UserError
from insanesr_dist.model.architecture import InsaneSRNet
from insanesr_dist.model.files import read_metadata, save_weights
from insanesr_dist.model.weights import load_model
from insanesr_dist.scoring.submission import read_submission, write_submission
from insanesr_dist.training.faults import BadSteps
from insanesr_dist.training.optimizer import make_optimizer

ARGS = [*TINY, "--patch-size", str(PATCH)]  # the bad cases are built around this crop size


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_folder(root)


def _lines_about(output: str, path: Path) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(pairs.show(path) + ":")]


# ---------------------------------------------------------------------------------------------
# check-data and the trainer on every bad case


def test_check_data_lists_every_case_once_and_fails(bad_folder):
    root, cases = bad_folder
    result = run_cli("insanesr-dist", "check-data", str(root), "--patch-size", str(PATCH))
    assert_one_line_error(result, "training would stop")
    action = {"bad": "-> training stops", "converted": "-> converted", "note": "-> accepted", "ignored": "-> ignored"}
    for name, case in cases.items():
        lines = [line for line in _lines_about(result.stdout, case.path) if case.needle in line]
        assert len(lines) == 1, (name, result.stdout)
        assert lines[0].endswith(action[case.kind]) or action[case.kind] + " " in lines[0], (name, lines[0])
    summary = result.stdout.splitlines()[-1]
    bad = sum(1 for line in result.stdout.splitlines() if "-> training stops" in line)
    assert summary.startswith(f"check-data: {root}:") and f" {bad} bad," in summary and "would stop" in summary


def test_check_data_with_skip_passes_and_an_empty_folder_fails(bad_folder, tmp_path):
    root, _ = bad_folder
    result = run_cli("insanesr-dist", "check-data", str(root), "--patch-size", str(PATCH), "--on-bad-sample", "skip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> skipped" in result.stdout and "would run" in result.stdout.splitlines()[-1]
    empty = run_cli("insanesr-dist", "check-data", str(make_empty_folder(tmp_path / "e")))
    assert_one_line_error(empty, "training would stop")
    assert "empty folder" in empty.stdout


@pytest.mark.slow
def test_training_stops_on_the_first_bad_file_or_skips_each_once(bad_folder, tmp_path):
    root, cases = bad_folder
    refused = run_cli("insanesr-dist", "train", "--data", str(root), *ARGS, "--output-dir", str(tmp_path / "a"))
    assert_one_line_error(refused, "check-data")
    error = next(line for line in refused.stderr.splitlines() if line.startswith("Error:"))
    assert any(pairs.show(c.path) in error for c in cases.values() if c.kind == "bad"), error

    # fp16 asked for on a CPU: the run explains the choice it made instead of failing
    run = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(root),
        *ARGS,
        "--epochs",
        "1",
        "--on-bad-sample",
        "skip",
        "--mixed-precision",
        "fp16",
        "--output-dir",
        str(tmp_path / "b"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "fp16 needs a CUDA GPU" in out
    for name, case in cases.items():
        skipped = [line for line in out.splitlines() if line.startswith(f"skipping {pairs.show(case.path)}:")]
        assert len(skipped) == (case.kind == "bad"), (name, skipped)
    total = sum(line.startswith("skipping ") for line in out.splitlines())  # cases + their partners and twins
    assert total >= sum(c.kind == "bad" for c in cases.values()) and f"left out {total} bad file(s)" in out
    # 6 good pairs + the converted and accepted ones are what is trained and validated on
    usable = 6 + len({c.path.name for c in cases.values() if c.kind in ("converted", "note")})
    header = next(line for line in out.splitlines() if line.startswith("insanesr-dist:"))
    counts = header.split(": ", 2)[2].split(" images")[0].replace(" train", "").replace(" val", "").split(" / ")
    assert int(counts[0]) + int(counts[1]) == usable, header
    assert (tmp_path / "b" / "best.safetensors").is_file()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-bad-steps", "0"], "max_bad_steps must be >= 1"),
        (["--on-bad-sample", "ignore"], "'ignore' is not one of"),
    ],
)
def test_bad_fault_options_are_usage_errors(tmp_path, args, needle):
    result = run_cli("insanesr-dist", "train", "--data", str(tmp_path), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr and needle in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# The conversion rules, against independent readers (PIL)


def test_conversions_match_an_independent_reader(bad_folder):
    _, cases = bad_folder
    gray = images.read_image(cases["grayscale"].path)
    ref = np.asarray(Image.open(cases["grayscale"].path))
    assert all(np.array_equal(gray[..., c], ref) for c in range(3))
    pal = images.read_image(cases["palette"].path)
    assert np.array_equal(pal, np.asarray(Image.open(cases["palette"].path).convert("RGB")))
    rgba = images.read_image(cases["RGBA"].path)
    assert np.array_equal(rgba, np.asarray(Image.open(cases["RGBA"].path))[..., :3])  # RGB as stored
    deep = images.read_image(cases["16-bit"].path)
    raw = cv2.cvtColor(cv2.imread(str(cases["16-bit"].path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert raw.dtype == np.uint16 and np.array_equal(deep, np.round(raw / 257).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Numerical faults


def _tiny_step(model, opt, bad, x, poison: bool):
    loss = torch.nn.functional.mse_loss(model(x * (float("nan") if poison else 1.0)), torch.rand(1, 3, 16, 16))
    loss.backward()
    bad.check(model.parameters())
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("autocast", [False, True])
def test_a_non_finite_step_changes_nothing_and_too_many_stop(autocast):
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2)
    opt = make_optimizer(model.parameters(), 1e-3)
    bad = BadSteps(SimpleNamespace(scaler=None, device=torch.device("cpu")), opt, limit=3)
    x = torch.rand(1, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _tiny_step(model, opt, bad, x, poison=False)
        before = [p.detach().clone() for p in model.parameters()]
        state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state.items()}
        _tiny_step(model, opt, bad, x, poison=True)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert all(torch.equal(state[k][n], opt.state[k][n]) for k in state for n in state[k])
        _tiny_step(model, opt, bad, x, poison=True)
        said = []
        assert bad.read(3, said.append) == 2 and "skipped 2" in said[0]
        _tiny_step(model, opt, bad, x, poison=False)  # a good step ends the run of bad ones ...
        assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        for _ in range(2):
            _tiny_step(model, opt, bad, x, poison=True)
        bad.read(6, said.append)  # ... so 2 more in a row stay under the limit of 3
        _tiny_step(model, opt, bad, x, poison=True)
        with pytest.raises(UserError, match=r"3 optimizer steps in a row .*--max-bad-steps 3"):
            bad.read(7, said.append)


def _scaled_step(model, opt, scaler, bad, x, poison: bool):
    """An fp16-style step as accelerate makes it: scaled backward, then GradScaler.step and update."""
    loss = torch.nn.functional.mse_loss(model(x), torch.rand(1, 3, 16, 16)) * (float("inf") if poison else 1.0)
    scaler.scale(loss).backward()
    bad.check(model.parameters())
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def test_gradscaler_skips_are_counted_and_too_many_in_a_row_stop():
    # fp16's GradScaler skips a step with non-finite gradients itself and halves its scale; a real one
    # on the CPU (torch.amp.GradScaler("cpu")) with a forced inf, as accelerate drives it in fp16.
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2)
    opt = make_optimizer(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    bad = BadSteps(SimpleNamespace(scaler=scaler, device=torch.device("cpu")), opt, limit=3)
    x = torch.rand(1, 3, 4, 4)
    _scaled_step(model, opt, scaler, bad, x, poison=False)
    before = [p.detach().clone() for p in model.parameters()]
    said = []
    assert bad.read(1, said.append) == 0 and not said
    for _ in range(2):
        _scaled_step(model, opt, scaler, bad, x, poison=True)
    assert scaler.get_scale() == 2.0**14  # halved twice: both steps were skipped ...
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # ... and changed nothing
    assert bad.read(3, said.append) == 2 and "skipped 2" in said[0]
    _scaled_step(model, opt, scaler, bad, x, poison=False)  # a good step ends the run of bad ones ...
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for _ in range(2):
        _scaled_step(model, opt, scaler, bad, x, poison=True)
    assert bad.read(6, said.append) == 2  # ... so 2 more in a row stay under the limit of 3
    _scaled_step(model, opt, scaler, bad, x, poison=True)
    with pytest.raises(UserError, match=r"3 optimizer steps in a row .*--max-bad-steps 3"):
        bad.read(7, said.append)


def test_gradscaler_steps_are_counted_once_whether_read_between_them_or_not():
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2)
    opt = make_optimizer(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler("cpu", growth_interval=1)  # the scale also grows: growth is no skip
    bad = BadSteps(SimpleNamespace(scaler=scaler, device=torch.device("cpu")), opt, limit=10)
    x = torch.rand(1, 3, 4, 4)
    said = []
    for poison in (False, True, False, True, True, False):
        _scaled_step(model, opt, scaler, bad, x, poison=poison)
    assert bad.read(6, said.append) == 3 and bad.read(6, said.append) == 0
    assert len(said) == 1 and said[0].startswith("warning: skipped 3 optimizer step(s)")


NAN_AFTER = """
class Custom(Trainer):
    calls = 0
    def loss(self, sr, hr):  # a fault from step {after} on, as an overflow in the model would give
        self.calls += 1
        loss = super().loss(sr, hr)
        return loss * float("nan") if self.calls > {after} else loss
"""


def _bad_step_run(data: Path, tmp_path: Path, *more: str) -> tuple[Path, list[str]]:
    """The output folder and arguments of a short tiny-model float32 run on `data` (conftest's pair_folder: 20
    training pairs, 5 steps an epoch) that stops after 3 bad optimizer steps in a row, a loss line every step;
    `more` flags after the tiny model's. No DataLoader workers: the bad steps are the training process's."""
    out = tmp_path / "run"
    args = ["--data", str(data), *TINY, *NO_WORKERS, *more, "--log-every", "1", "--max-bad-steps", "3"]
    return out, [*args, "--mixed-precision", "no", "--output-dir", str(out)]


@pytest.mark.slow
def test_a_run_of_non_finite_steps_stops_and_keeps_the_last_good_files(pair_folder, tmp_path):
    out, args = _bad_step_run(pair_folder, tmp_path, "--epochs", "3")
    result = run_train_script(NAN_AFTER.format(after=5), *args)
    assert_one_line_error(result, "3 optimizer steps in a row", "--max-bad-steps 3")
    assert "warning: skipped 1 optimizer step(s)" in result.stdout + result.stderr
    # epoch 1 (5 steps) finished; epoch 2 stopped: nothing of it was written
    assert read_metadata(out / "latest.safetensors")["epoch"] == 1
    assert read_metadata(out / "best.safetensors")["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    load_model(out / "latest.safetensors")  # resuming after a fault: see the write-failure test below


NAN_FORWARD = """
class Custom(Trainer):
    calls = 0
    def loss(self, sr, hr):  # training forwards {first}..{last} (1-based) overflow to NaN, as an fp16 forward can
        self.calls += 1
        return super().loss(sr * float("nan") if {first} <= self.calls <= {last} else sr, hr)
"""


def _default_preset_run(data: Path, tmp_path: Path, nan_first: int, nan_last: int):
    """A short run with --preset default (its loss has the SSIM term) whose model forward returns NaN on
    training steps nan_first..nan_last."""
    out, args = _bad_step_run(data, tmp_path, "--preset", "default", "--panel-images", "0", "--epochs", "2")
    return out, run_train_script(NAN_FORWARD.format(first=nan_first, last=nan_last), *args)


@pytest.mark.slow
def test_a_nan_forward_under_the_default_loss_skips_its_steps_and_the_run_finishes(pair_folder, tmp_path):
    out, result = _default_preset_run(pair_folder, tmp_path, nan_first=3, nan_last=4)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    skipped = [line for line in output.splitlines() if line.startswith("warning: skipped ")]
    assert skipped and "(up to step 4; 2 in this run)" in skipped[-1], skipped
    for name in ("latest.safetensors", "best.safetensors"):
        weights = load_file(str(out / name))
        assert all(torch.isfinite(t).all() for t in weights.values()), name


@pytest.mark.slow
def test_a_forward_that_is_always_nan_under_the_default_loss_stops_with_one_line(pair_folder, tmp_path):
    out, result = _default_preset_run(pair_folder, tmp_path, nan_first=1, nan_last=10**9)
    assert_one_line_error(result, "3 optimizer steps in a row", "--max-bad-steps 3")
    assert not (out / "best.safetensors").exists()  # no epoch finished, so nothing trained on NaNs was saved


# ---------------------------------------------------------------------------------------------
# File faults


def _half_then_fail(real):
    """A writer that leaves half its file, then fails as a full disk would."""

    def write(*args, **kwargs):
        real(*args, **kwargs)
        target = next(a for a in args if isinstance(a, (str, os.PathLike)) and os.path.exists(a))
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    return write


def test_a_broken_connection_is_not_called_a_full_disk():
    import errno

    from insanesr_dist.training.faults import io_failure

    full = io_failure(OSError(errno.ENOSPC, "No space left on device", "/run/latest.safetensors"))
    assert full.startswith("/run/latest.safetensors: No space left on device") and "make room" in full
    wrapped = RuntimeError("a batch failed")
    wrapped.__cause__ = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    broken = io_failure(wrapped)
    assert "broke (Connection reset by peer)" in broken and "make room" not in broken
    assert "rerun the same command" in broken


def test_a_failed_write_leaves_the_previous_files_readable(tmp_path, monkeypatch):
    import insanesr_dist.model.files as model_module  # save_weights writes with its save_file

    old = InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2)
    save_weights(old, tmp_path / "latest.safetensors", epoch=1)
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    write_submission(tmp_path / "sub.csv", [("a.png", png)])
    atomic.append_line_atomic(tmp_path / "metrics.jsonl", '{"epoch": 1}')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    monkeypatch.setattr(model_module, "save_file", _half_then_fail(model_module.save_file))
    with pytest.raises(OSError):
        save_weights(
            InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2), tmp_path / "latest.safetensors", epoch=2
        )

    real_open = open

    def failing_open(path, mode="r", *a, **k):  # the CSV and metrics writers fail half-way as well
        f = real_open(path, mode, *a, **k)
        if "w" in mode and ".tmp" in str(path):
            real_write = f.write

            def write(text):
                real_write(text[: len(text) // 2])
                raise OSError(28, "No space left on device")

            f.write = write
        return f

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError):
        write_submission(tmp_path / "sub.csv", [("b.png", png)] * 3)
    monkeypatch.setattr(Path, "write_text", lambda self, text, **k: failing_open(self, "w").write(text))
    with pytest.raises(OSError):
        atomic.append_line_atomic(tmp_path / "metrics.jsonl", '{"epoch": 2}')
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # same files, no temp left
    assert read_metadata(tmp_path / "latest.safetensors")["epoch"] == 1
    assert list(read_submission(tmp_path / "sub.csv")) == ["a.png"]


DISK_FULL_AT_EPOCH_2 = """
import insanesr_dist.model.files as M
real = M.save_file
def save_file(state, path, metadata=None):  # the disk fills up while epoch 2's weights are written
    real(state, path, metadata=metadata)
    if metadata and metadata.get("epoch") == "2":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        raise OSError(28, "No space left on device", path)
M.save_file = save_file
"""


@pytest.mark.slow
def test_a_write_failing_mid_run_leaves_every_file_readable_and_the_run_resumable(tmp_path):
    data = make_pair_folder(tmp_path / "d", num_train=23, num_test=2)
    out = tmp_path / "run"
    args = [
        "--data",
        str(data),
        *TINY,
        "--panel-images",
        "0",
        "--mixed-precision",
        "no",
        "--epochs",
        "2",
        "--output-dir",
        str(out),
    ]
    failed = run_train_script(DISK_FULL_AT_EPOCH_2, *args)
    assert_one_line_error(failed, "No space left on device", "rerun the same command")
    assert read_metadata(out / "latest.safetensors")["epoch"] == 1 and load_model(out / "latest.safetensors")
    assert read_metadata(out / "best.safetensors")["epoch"] == 1
    for epoch in (1, 2):  # epoch 2's CSV was complete before its weights failed
        assert len(read_submission(out / "submissions" / f"epoch_{epoch:03d}.csv")) == 2
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not list(out.glob(".*.tmp"))  # the failed write cleaned up after itself
    again = run_cli("insanesr-dist", "train", *args)
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stderr[-2000:]
    assert read_metadata(out / "latest.safetensors")["epoch"] == 2


@pytest.mark.slow
def test_a_real_file_size_limit_gives_one_line_and_no_hang(tmp_path):
    """The OS refuses a write (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) wherever it first hits."""
    data = make_pair_folder(tmp_path / "d", num_train=23, num_test=2)
    args = [
        "insanesr-dist",
        "train",
        "--data",
        str(data),
        *TINY,
        "--panel-images",
        "0",
        "--mixed-precision",
        "no",
        "--checkpoint-every",
        "2",
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "run"),
    ]

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # below the tiny model's weights file

    load_splits(data, val_fraction=0.1, seed=0)  # the decoded store first (test_store covers a limit there)
    limited = run_cli(*args, preexec_fn=limit_file_size, timeout=120)
    assert_one_line_error(limited, "File too large", "rerun the same command")
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_metadata(tmp_path / "run" / "latest.safetensors")["epoch"] == 1


# ---------------------------------------------------------------------------------------------
# Loading weights


def test_pickles_are_refused_unless_allowed_and_mismatches_are_named(tmp_path):
    torch.manual_seed(0)
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2).eval()
    torch.save(model.state_dict(), tmp_path / "seed.pth")  # how the seed report saved its weights
    with pytest.raises(UserError, match=r"pickle.*--allow-pickle"):
        load_model(tmp_path / "seed.pth")
    loaded = load_model(tmp_path / "seed.pth", allow_pickle=True).eval()
    x = torch.rand(1, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))

    save_weights(model, tmp_path / "w.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "w.safetensors")
    state["tail.weight"] = torch.zeros(3, 8, 5, 5)
    save_file(state, tmp_path / "bad.safetensors", metadata={"insanesr_config": json.dumps(model.config.__dict__)})
    with pytest.raises(UserError, match=r"tail.weight is \[3, 8, 5, 5\] in the file but \[3, 8, 3, 3\]"):
        load_model(tmp_path / "bad.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "w.safetensors").read_bytes()[:-100])
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_model(cut)


def test_predict_refuses_a_pickle_in_one_line_and_takes_it_when_allowed(tmp_path):
    model = InsaneSRNet(num_rrdb=1, channels=8, growth=4, layers_per_block=2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    make_pair_folder(tmp_path / "d", num_train=0, num_test=1)
    args = [
        "insanesr-dist",
        "predict",
        "--checkpoint",
        str(tmp_path / "w.pth"),
        "--input",
        str(tmp_path / "d" / "test" / "LR"),
        "--csv",
        str(tmp_path / "s.csv"),
    ]
    assert_one_line_error(run_cli(*args), "w.pth", "--allow-pickle")
    allowed = run_cli(*args, "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert list(read_submission(tmp_path / "s.csv")) == ["img_000.png"]
