"""The embedded demo dataset: layout, LR/HR relation, determinism, content, and the shared cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from insanesr_dist.cli import cli
from insanesr_dist.data import demo as demo_data
from insanesr_dist.data.demo import DEMO_VERSION, demo_data_dir, ensure_demo_data, parse_size, write_demo_data

SMALL = {"num_train": 6, "num_test": 2, "hr_size": 64}
REPO = Path(__file__).resolve().parents[2]


def names(start: int, count: int) -> list[str]:
    return [f"{i:05d}.png" for i in range(start, start + count)]


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Hidden temp dirs the atomic writer must never leave behind."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def assert_complete(root: Path, num_train: int, num_test: int) -> None:
    assert sorted(os.listdir(root)) == ["test", "train"]
    assert sorted(os.listdir(root / "train")) == ["HR", "LR"]
    assert os.listdir(root / "test") == ["LR"]
    assert sorted(os.listdir(root / "train" / "HR")) == names(0, num_train)
    assert sorted(os.listdir(root / "train" / "LR")) == names(0, num_train)
    assert sorted(os.listdir(root / "test" / "LR")) == names(num_train, num_test)


def looks_like_a_frame(img: np.ndarray) -> bool:
    """Flat colours with crisp edges: a blank image, a smooth gradient and pure noise all fail."""
    colors = len(np.unique(img.reshape(-1, 3), axis=0))
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.int16)
    edges = (np.abs(np.diff(gray, axis=1)) > 24).mean()  # share of strong horizontal steps
    return 8 <= colors <= img.shape[0] * img.shape[1] // 4 and img.std() > 15 and 0.01 < edges < 0.6


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return write_demo_data(tmp_path_factory.mktemp("demo") / "set", **SMALL)


def test_layout_and_names(small_set):
    assert isinstance(small_set, Path)
    assert_complete(small_set, 6, 2)  # test ids continue after train ids: 00006, 00007
    assert leftovers(small_set.parent) == []


def test_hr_is_4x_lr_rgb_uint8(small_set):
    for name in names(0, 6):
        hr, lr = read(small_set / "train" / "HR" / name), read(small_set / "train" / "LR" / name)
        assert hr.dtype == lr.dtype == np.uint8
        assert hr.shape == (64, 64, 3) and lr.shape == (16, 16, 3)
    for name in names(6, 2):
        assert read(small_set / "test" / "LR" / name).shape == (16, 16, 3)


def test_lr_is_bicubic_downscale_of_hr(small_set):
    for name in names(0, 6):
        hr, lr = read(small_set / "train" / "HR" / name), read(small_set / "train" / "LR" / name)
        np.testing.assert_array_equal(lr, cv2.resize(hr, (16, 16), interpolation=cv2.INTER_CUBIC))


def test_files_hold_the_rendered_rgb_frames(small_set):
    # Frames are rendered in RGB; on disk (BGR for OpenCV) they must read back as the same colours.
    for index in (0, 5):
        rgb = demo_data._render_frame(np.random.default_rng((0, index)), 64)
        np.testing.assert_array_equal(read(small_set / "train" / "HR" / f"{index:05d}.png")[:, :, ::-1], rgb)
    rgb = demo_data._render_frame(np.random.default_rng((0, 7)), 64)  # last test frame
    lr = cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(read(small_set / "test" / "LR" / "00007.png")[:, :, ::-1], lr)


def test_same_seed_gives_byte_identical_files(small_set, tmp_path):
    again = write_demo_data(tmp_path / "again", **SMALL)
    assert all_bytes(again) == all_bytes(small_set)


def test_different_seeds_differ(small_set, tmp_path):
    other = write_demo_data(tmp_path / "other", **SMALL, seed=1)
    for name in names(0, 6):
        assert (other / "train" / "HR" / name).read_bytes() != (small_set / "train" / "HR" / name).read_bytes()
    # No shifted overlap either (as seed + index seeding would give): seed 1's frames are all new.
    ours = {(small_set / "train" / "HR" / n).read_bytes() for n in names(0, 6)}
    assert not ours & {(other / "train" / "HR" / n).read_bytes() for n in names(0, 6)}


def test_frames_are_not_trivial(small_set):
    frames = [read(small_set / "train" / "HR" / name) for name in names(0, 6)]
    assert all(looks_like_a_frame(f) for f in frames)
    assert len({f.tobytes() for f in frames}) == len(frames)
    # The check itself rejects what a broken generator could produce.
    rng = np.random.default_rng(0)
    assert not looks_like_a_frame(np.full((64, 64, 3), 90, np.uint8))
    assert not looks_like_a_frame(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 64, 3)).copy()
    assert not looks_like_a_frame(ramp)


@pytest.mark.parametrize("hr_size", [16, 100, 512])
def test_other_sizes(tmp_path, hr_size):
    root = write_demo_data(tmp_path / "s", num_train=2, num_test=0, hr_size=hr_size)
    assert read(root / "train" / "HR" / "00001.png").shape == (hr_size, hr_size, 3)
    assert read(root / "train" / "LR" / "00001.png").shape == (hr_size // 4, hr_size // 4, 3)
    assert os.listdir(root / "test" / "LR") == []


def test_square_frames_are_unchanged():
    # Square frames (and so the default demo cache, named by DEMO_VERSION, and the docs' figures on it) must
    # not change. Computed at commit 26c8923 (before non-square frames existed), with OpenCV 5.0, by:
    #   h = hashlib.sha256()
    #   for i in range(4): h.update(demo_data._render_frame(np.random.default_rng((0, i)), 256).tobytes())
    # The HUD text is drawn with OpenCV's fonts, which OpenCV 5.1 changed (wider glyphs, upright italics): that
    # is why setup.cfg holds opencv-python at 5.0.x.
    h = hashlib.sha256()
    for i in range(4):
        h.update(demo_data._render_frame(np.random.default_rng((0, i)), 256).tobytes())
    expected = "e4d5482ea955d95c5cd2e03521b344f544ff4abb7cf04db4860bc4e16d06fe17"
    assert h.hexdigest() == expected, f"the demo frames changed (OpenCV {cv2.__version__})"


def test_non_square_frames(tmp_path):
    # (height, width) in Python, WxH on the command line (tested below).
    root = write_demo_data(tmp_path / "wide", num_train=2, num_test=1, hr_size=(48, 96))
    for name in names(0, 2):
        hr, lr = read(root / "train" / "HR" / name), read(root / "train" / "LR" / name)
        assert hr.shape == (48, 96, 3) and lr.shape == (12, 24, 3)
        np.testing.assert_array_equal(lr, cv2.resize(hr, (24, 12), interpolation=cv2.INTER_CUBIC))
        assert looks_like_a_frame(hr)
    assert read(root / "test" / "LR" / "00002.png").shape == (12, 24, 3)
    tall = demo_data._render_frame(np.random.default_rng((0, 0)), (96, 48))
    assert tall.shape == (96, 48, 3) and looks_like_a_frame(tall)


def test_wide_frames_fill_their_width():
    # A wide frame is not a square one padded: its right part has content like its left part.
    for index in range(6):
        img = demo_data._render_frame(np.random.default_rng((0, index)), (128, 384))
        assert looks_like_a_frame(img[:, :128]) and looks_like_a_frame(img[:, -128:]), index


@pytest.mark.slow
def test_any_number_of_workers_writes_the_same_files(tmp_path):
    one = write_demo_data(tmp_path / "one", num_train=5, num_test=2, hr_size=(32, 48), workers=1)
    two = write_demo_data(tmp_path / "two", num_train=5, num_test=2, hr_size=(32, 48), workers=2)
    assert_complete(two, 5, 2)
    assert all_bytes(one) == all_bytes(two)
    assert leftovers(tmp_path) == []


def test_cli_writes_wxh_frames(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        cli, ["make-demo-data", str(out), "--num-train", "2", "--num-test", "0", "--hr-size", "64x32", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "(HR 64x32)" in result.output
    assert read(out / "train" / "HR" / "00001.png").shape == (32, 64, 3)
    assert read(out / "train" / "LR" / "00001.png").shape == (8, 16, 3)


@pytest.mark.parametrize("text, hw", [("256", (256, 256)), ("2040x1344", (1344, 2040)), ("16X20", (20, 16))])
def test_parse_size(text, hw):
    assert parse_size(text) == hw


@pytest.mark.parametrize("value", ["66", "12", "2040x1346", "16x8", "0x0", "abc", "64x", "x64", "-64", "64x32x4"])
def test_cli_bad_hr_size_is_one_line(tmp_path, value):
    out = tmp_path / "bad"
    result = CliRunner().invoke(cli, ["make-demo-data", str(out), "--hr-size", value])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--hr-size" in errors[0], result.output
    assert result.output.rstrip().endswith(errors[0]) and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs",
    [{"hr_size": 66}, {"hr_size": 12}, {"hr_size": (64, 30)}, {"num_train": 0}, {"num_test": -1}, {"workers": 0}],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_demo_data(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_existing_non_empty_dir_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_demo_data(out, **SMALL)
    assert os.listdir(out) == ["mine.txt"] and leftovers(tmp_path) == []


def test_existing_empty_dir_is_filled(tmp_path):
    (tmp_path / "out").mkdir()
    assert_complete(write_demo_data(tmp_path / "out", **SMALL), 6, 2)


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(demo_data, "imwrite_rgb", fail)
    with pytest.raises(OSError, match="disk full"):
        write_demo_data(tmp_path / "out", **SMALL)
    assert os.listdir(tmp_path) == []


def test_demo_data_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_data_dir() == tmp_path / "xdg" / "insanesr-dist" / f"demo-v{DEMO_VERSION}"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in (lambda: monkeypatch.setenv("XDG_CACHE_HOME", ""), lambda: monkeypatch.delenv("XDG_CACHE_HOME")):
        unset()
        assert demo_data_dir() == tmp_path / "home" / ".cache" / "insanesr-dist" / f"demo-v{DEMO_VERSION}"


def test_ensure_generates_the_default_set_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    start = time.perf_counter()
    root = ensure_demo_data()  # the full default set: 200 train + 20 test at 256 px
    print(f"default demo set generated in {time.perf_counter() - start:.2f} s")
    assert root == tmp_path / "insanesr-dist" / f"demo-v{DEMO_VERSION}"
    assert_complete(root, 200, 20)
    assert read(root / "train" / "HR" / "00199.png").shape == (256, 256, 3)
    assert read(root / "test" / "LR" / "00219.png").shape == (64, 64, 3)
    stamps = {p: p.stat().st_mtime_ns for p in (root, root / "train" / "HR", root / "train" / "HR" / "00000.png")}

    def regenerate(*args, **kwargs):
        raise AssertionError("a complete cache must not be regenerated")

    monkeypatch.setattr(demo_data, "_write", regenerate)
    assert ensure_demo_data() == root
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_ensure_refuses_an_incomplete_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    demo_data_dir().mkdir(parents=True)
    (demo_data_dir() / "stray.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="delete it"):
        ensure_demo_data()


def test_ensure_uses_the_winners_copy_after_losing_the_race(tmp_path, monkeypatch):
    # Another rank finishes first: just before our rename, the target appears complete.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real_rename, ours = os.rename, []

    def rename(src, dst):
        if not ours:
            ours.append(Path(src))
            write_demo_data(dst)  # the "other rank"; its own rename is the real one
        return real_rename(src, dst)

    monkeypatch.setattr(demo_data.os, "rename", rename)
    assert ensure_demo_data() == demo_data_dir()
    assert_complete(demo_data_dir(), 200, 20)
    assert not ours[0].exists() and leftovers(demo_data_dir().parent) == []


def test_ensure_from_two_processes_at_once(tmp_path):
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from insanesr_dist.data.demo import ensure_demo_data\n"
        "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.005)\n"
        "print(ensure_demo_data())\n"
    )
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    time.sleep(0.5)  # let both import numpy and cv2, so they start generating together
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    root = tmp_path / "cache" / "insanesr-dist" / f"demo-v{DEMO_VERSION}"
    assert [Path(out.strip()) for out, _ in results] == [root, root]
    assert_complete(root, 200, 20)
    assert leftovers(root.parent) == []
    assert all_bytes(root) == all_bytes(write_demo_data(tmp_path / "ref"))
