"""data.pairs: folder scanning, LR/HR pairing by name and the pair and patch checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from insanesr_dist.data.images import SSIM_WINDOW
from insanesr_dist.data.pairs import (
    Finding,
    image_files,
    is_saved_dataset,
    pair_names,
    pair_problem,
    patch_problem,
    scale_suffix,
    scan_folder,
    some_image_files,
)
from insanesr_dist.errors import UserError


def names(*items: str) -> dict[str, Path]:
    return {name: Path("/data") / name for name in items}


def test_scale_suffix_gives_the_hr_names_and_the_scale():
    assert scale_suffix("0001x4.png") == (["0001.png"], 4)
    assert scale_suffix("act1/0001_x2.png") == (["act1/0001.png", "act1/0001_.png"], 2)
    assert scale_suffix("shot-X3.bmp") == (["shot.bmp", "shot-.bmp"], 3)
    assert scale_suffix("0001.png") is None and scale_suffix("x4.png") is None


def test_pairs_by_same_name_or_scale_suffix_and_every_other_file_is_named():
    lr = names("a.png", "0002x4.png", "0003x2.png", "lonely.png", "b.png")
    hr = names("a.png", "0002.png", "0003.png", "b.jpg")
    pairs, findings = pair_names(lr, hr, scale=4)
    assert pairs == [("0002x4.png", "0002.png"), ("a.png", "a.png")]
    by_file = {Path(f.path).name: f.problem for f in findings}
    assert set(by_file) == {"0003x2.png", "lonely.png", "b.png", "0003.png", "b.jpg"}
    assert "named for x2" in by_file["0003x2.png"] and "x4" in by_file["0003x2.png"]
    assert by_file["lonely.png"] == "has no partner of the same name in the HR folder"
    assert "it has b.jpg" in by_file["b.png"]  # the near miss is pointed out
    assert all(f.kind == "bad" for f in findings)


def test_a_same_name_pair_wins_over_a_scale_suffix_pair():
    pairs, findings = pair_names(names("0001.png", "0001x4.png"), names("0001.png"), scale=4)
    assert pairs == [("0001.png", "0001.png")]
    assert [Path(f.path).name for f in findings] == ["0001x4.png"]


def test_pair_problem_wants_exactly_scale_times_the_lr_and_the_ssim_window():
    assert pair_problem((10, 12, 3), (40, 48, 3), 4) is None
    problem = pair_problem((10, 12), (41, 48), 4)
    assert "HR is 48x41 but its LR is 12x10" in problem and "height off by +1 px" in problem
    assert "width" not in problem.split(":")[-1]
    assert SSIM_WINDOW > 4
    assert (
        pair_problem((1, 10), (4, 40), 4) == f"HR is 40x4, smaller than the {SSIM_WINDOW} px SSIM window of the metric"
    )


def test_patch_problem_only_for_lr_smaller_than_the_patch():
    assert patch_problem((32, 40, 3), 32) is None
    assert patch_problem((31, 40, 3), 32) == "LR is 40x31, smaller than --patch-size 32"
    assert patch_problem((3, 3, 3), 0) is None  # no crops: any size


def test_scan_folder_lists_images_by_relative_name_and_finds_the_rest(tmp_path):
    for name in ["a.png", "sub/b.PNG", "c.txt", ".hidden/d.png", "A.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, findings = scan_folder(tmp_path)
    assert files == {"sub/b.PNG": tmp_path / "sub" / "b.PNG"}
    kinds = {Path(f.path).name: f.kind for f in findings}
    assert kinds == {".hidden": "ignored", "c.txt": "ignored", "a.png": "bad", "A.jpg": "bad"}  # same id up to case
    assert [p.name for p in image_files(tmp_path)] == ["A.jpg", "a.png"]  # direct files only, by suffix


def test_finding_lines_say_what_happens_to_the_file():
    bad, note = Finding("x.png", "broken"), Finding("y.png", "grey", "note")
    assert bad.line("skip").endswith("x.png: broken -> skipped")
    assert "training stops" in bad.action("stop") and note.action("stop") == "accepted"


def test_is_saved_dataset_reads_the_marker_files(tmp_path):
    assert not is_saved_dataset(tmp_path)
    (tmp_path / "dataset_dict.json").write_text("{}")
    assert is_saved_dataset(tmp_path)


def test_some_image_files_lists_the_images_or_says_in_one_line_that_there_are_none(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b.PNG").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    assert [p.name for p in some_image_files(tmp_path)] == ["a.jpg", "b.PNG"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(UserError) as e:
        some_image_files(empty, "LR ")
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith(f"{empty}: no LR images found (looked for ")
    assert ".png" in line


def test_a_bmp_is_decoded_exactly_and_one_cut_short_is_named():
    import numpy as np

    from insanesr_dist.data.images import decode_image, encode_image

    rgb = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    data = encode_image(rgb, "bmp")
    assert np.array_equal(decode_image(data, "tile.bmp"), rgb)
    with pytest.raises(UserError, match=r"tile\.bmp: cannot be decoded: truncated BMP file"):
        decode_image(data[:-7], "tile.bmp")
