"""The game-art study set (`make-demo-data --kind game-art`), built from a small wheel-like zip that each test
makes itself (no network): layout and splits, HR = 4 x LR by the demo's bicubic, determinism, the licence
files, which folders are read, and the one-line errors."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from insanesr_dist.cli import cli
from insanesr_dist.data import game_art, sources
from insanesr_dist.data.degrade import lr_from_hr
from insanesr_dist.data.game_art import ART_ROOT, LICENCE_FILE, read_art, write_game_art
from insanesr_dist.errors import UserError

LICENCE = "Everything in this package is licensed CC0.\nhttp://creativecommons.org/publicdomain/zero/1.0/\n"
SMALL = {"num_train": 4, "num_val": 2, "num_test": 2, "hr_size": 64}


def png(rgba: np.ndarray) -> bytes:
    channels = rgba.shape[2]
    bgr = cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA if channels == 4 else cv2.COLOR_RGB2BGR)
    return cv2.imencode(".png", bgr)[1].tobytes()


def sprite(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat-coloured disc with an outline on a transparent square."""
    img = np.zeros((size, size, 4), np.uint8)
    color = tuple(int(c) for c in rng.integers(40, 256, 3))
    cv2.circle(img, (size // 2, size // 2), size // 3, (*color, 255), -1)
    cv2.circle(img, (size // 2, size // 2), size // 3, (20, 20, 20, 255), 2)
    return img


def tile(rng: np.random.Generator, size: int, alpha: bool) -> np.ndarray:
    """A two-tone textured square: opaque, or with a transparent top quarter (a platform's surface)."""
    img = np.zeros((size, size, 4), np.uint8)
    img[..., :3] = rng.integers(60, 200, 3)
    img[size // 2 :, :, :3] //= 2
    img[..., 3] = 255
    if alpha:
        img[: size // 4, :, 3] = 0
    return img if alpha else img[..., :3]


def make_wheel(path: Path, *, art: bool = True, licence: str | None = LICENCE) -> Path:
    """A zip laid out like the arcade wheel: a few tiles and sprites in the folders game_art reads, one image in a
    folder it must not read (another artist's), METADATA and the licence file."""
    rng = np.random.default_rng(7)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arcade-9.9.1.dist-info/METADATA", "Metadata-Version: 2.4\nName: arcade\nVersion: 9.9.1\n")
        zf.writestr("arcade/__init__.py", "")
        if licence is not None:
            zf.writestr(LICENCE_FILE, licence)
        if not art:
            return path
        for name in ("grassMid", "grassCenter", "grassHalf_mid", "bush", "boxCrate"):
            zf.writestr(f"{ART_ROOT}tiles/{name}.png", png(tile(rng, 32, alpha=True)))
        for name in ("tileGrass1", "tileSand1", "tileGrass_roadEast", "tileGrass_roadNorth"):
            zf.writestr(f"{ART_ROOT}topdown_tanks/{name}.png", png(tile(rng, 16, alpha=False)))
        for folder, name in (("topdown_tanks", "tank_red"), ("enemies", "bee"), ("items", "coinGold")):
            zf.writestr(f"{ART_ROOT}{folder}/{name}.png", png(sprite(rng, 24)))
        zf.writestr(f"{ART_ROOT}cybercity_background/back.png", png(tile(rng, 32, alpha=False)))
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return make_wheel(tmp_path_factory.mktemp("wheel") / "arcade-9.9.1-py3-none-any.whl")


@pytest.fixture(scope="module")
def small_set(wheel, tmp_path_factory) -> Path:
    return write_game_art(tmp_path_factory.mktemp("art") / "set", wheel=wheel, **SMALL)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_splits_hold_hr_and_lr_pairs_with_ids_that_never_collide(small_set):
    expected = {"train": ["00000", "00001", "00002", "00003"], "val": ["00004", "00005"], "test": ["00006", "00007"]}
    assert sorted(p.name for p in small_set.iterdir()) == ["LICENSE.txt", "README.txt", "test", "train", "val"]
    for split, ids in expected.items():
        for kind in ("HR", "LR"):
            assert sorted(p.stem for p in (small_set / split / kind).iterdir()) == ids


def test_hr_is_4x_lr_by_the_demo_datas_bicubic(small_set):
    for hr_path in sorted(small_set.glob("*/HR/*.png")):
        hr, lr = read_rgb(hr_path), read_rgb(hr_path.parent.parent / "LR" / hr_path.name)
        assert hr.shape == (64, 64, 3) and lr.shape == (16, 16, 3) and hr.dtype == np.uint8
        assert np.array_equal(lr, lr_from_hr(hr, 4, "bicubic"))
        assert len(np.unique(hr.reshape(-1, 3), axis=0)) >= 4  # art was drawn, not a blank frame


def test_the_same_seed_writes_the_same_files_with_any_number_of_workers(wheel, small_set, tmp_path):
    again = write_game_art(tmp_path / "again", wheel=wheel, workers=2, **SMALL)
    assert all_bytes(again) == all_bytes(small_set)
    other = write_game_art(tmp_path / "other", wheel=wheel, seed=1, **SMALL)
    assert all_bytes(other)["train/HR/00000.png"] != all_bytes(small_set)["train/HR/00000.png"]


def test_the_licence_and_readme_name_the_package_version_and_licence(small_set):
    assert (small_set / "LICENSE.txt").read_text() == LICENCE
    readme = (small_set / "README.txt").read_text()
    for needle in ("arcade 9.9.1", "arcade-9.9.1-py3-none-any.whl", "CC0 1.0", "Kenney", "--seed 0", "val/HR"):
        assert needle in readme, needle


def test_only_the_cc0_folders_are_read(wheel):
    art = read_art(wheel)
    names = [name for images in art.images.values() for name, _ in images]
    assert len(names) == 12 and not any("cybercity" in name for name in names)
    assert [Path(n).name for n, _ in art.images["floor"]] == [
        "tileGrass1.png",
        "tileGrass_roadEast.png",
        "tileGrass_roadNorth.png",
        "tileSand1.png",
    ]
    assert all(image.dtype == np.uint8 and image.shape[2] == 4 for _, image in art.images["floor"])
    assert (art.package, art.version) == ("arcade", "9.9.1")


def test_data_dir_validates_on_the_val_split(small_set):
    folders = sources.find(small_set, 4)
    assert folders.val_hr == small_set / "val" / "HR" and folders.val_lr == small_set / "val" / "LR"
    assert folders.test_lr == small_set / "test" / "LR" and folders.train_hr == small_set / "train" / "HR"


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("no art", "no game art in it"),
        ("no licence", "does not say CC0"),
        ("not a zip", "not a readable wheel"),
    ],
)
def test_a_wheel_without_art_or_licence_is_one_line_through_the_cli(tmp_path, kind, needle):
    path = tmp_path / "bad.whl"
    if kind == "not a zip":
        path.write_text("not a zip")
    else:
        make_wheel(path, art=kind != "no art", licence=None if kind == "no licence" else LICENCE)
    result = CliRunner().invoke(
        cli, ["make-demo-data", str(tmp_path / "out"), "--kind", "game-art", "--wheel", str(path)]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_the_cli_writes_the_set_and_keeps_the_procedural_options_apart(wheel, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["make-demo-data", str(out), "--kind", "game-art", "--wheel", str(wheel), "--num-train", "2"]
    result = runner.invoke(cli, [*args, "--num-val", "1", "--num-test", "1", "--hr-size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "2 training pairs, 1 validation pairs and 1 test images" in result.output
    assert read_rgb(out / "test" / "HR" / "00003.png").shape == (32, 32, 3)
    result = runner.invoke(cli, ["make-demo-data", str(tmp_path / "p"), "--num-val", "3"])
    assert result.exit_code == 2 and "--num-val and --wheel are for --kind game-art" in result.output


def test_without_wheel_a_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(command, **options):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for arcade==3.3.3")

    monkeypatch.setattr(game_art.subprocess, "run", offline)
    with pytest.raises(UserError, match=r"pip could not download arcade==3\.3\.3 \(ERROR: No matching.*--wheel"):
        write_game_art(tmp_path / "out", **SMALL)
