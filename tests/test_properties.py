"""Property-based tests (hypothesis): pairing, decoding/conversion, cropping and the CSV round trip hold
for random names, sizes and pixel modes, not only for the examples the other tests pick."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from insanesr_dist.data.crops import random_pair_crop
from insanesr_dist.data.images import decode_image, encode_png, header_size
from insanesr_dist.data.pairs import pair_names, scale_suffix
from insanesr_dist.scoring.submission import read_submission, write_submission

FAST = settings(max_examples=30, deadline=None)
names = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), min_size=1, max_size=8)


@FAST
@given(st.sets(names, max_size=8), st.sets(names, max_size=8), st.sets(names, max_size=4), st.sampled_from([2, 4]))
def test_pairs_are_shared_names_or_the_scale_suffix_and_every_other_file_is_named(lr, hr, suffixed, scale):
    lr_files = {f"{n}.png": Path("LR", f"{n}.png") for n in lr}
    lr_files.update({f"{n}x4.png": Path("LR", f"{n}x4.png") for n in suffixed})  # DIV2K's LR names
    hr_files = {f"{n}.png": Path("HR", f"{n}.png") for n in hr | suffixed}
    pairs, findings = pair_names(lr_files, hr_files, scale)
    # the same name always pairs; otherwise only LR name = HR name + the scale's suffix
    assert {lr for lr, hr in pairs if lr == hr} == set(lr_files) & set(hr_files)
    for lr_name, hr_name in pairs:
        assert lr_name == hr_name or (hr_name in scale_suffix(lr_name)[0] and scale_suffix(lr_name)[1] == scale)
    assert len({hr for _, hr in pairs}) == len(pairs)  # no HR file in two pairs
    # every file is in a pair or named by exactly one finding
    named = [Path(f.path).name for f in findings]
    paired = {lr for lr, _ in pairs} | {hr for _, hr in pairs}
    assert sorted(named) == sorted((set(lr_files) - {lr for lr, _ in pairs}) | (set(hr_files) - {h for _, h in pairs}))
    assert all(f.kind == "bad" for f in findings)
    for n in suffixed:  # a suffixed LR file finds its HR partner at its own scale, and is named at another
        if f"{n}.png" not in lr_files and f"{n}x4.png" not in hr_files:
            assert (f"{n}.png" in paired) == (scale == 4)
            assert (scale == 4) or any(f"is named for x4 (partner {n}.png)" in f.problem for f in findings)


MODES = ["L", "RGB", "RGBA", "LA", "P", "I;16", "RGB16"]


def _encode(mode: str, h: int, w: int, rng) -> tuple[bytes, np.ndarray]:
    """A PNG in `mode` and the RGB uint8 pixels the documented rules must give for it."""
    if mode == "RGB16":  # 16-bit colour: cv2 writes it (PIL cannot)
        deep = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
        data = cv2.imencode(".png", deep)[1].tobytes()
        return data, np.round(deep[..., ::-1] / 257).astype(np.uint8)
    if mode == "I;16":
        deep = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        data = cv2.imencode(".png", deep)[1].tobytes()
        return data, np.repeat(np.round(deep / 257).astype(np.uint8)[..., None], 3, 2)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=7) if mode == "P" else rgb.convert(mode)
    if mode in ("RGBA", "LA"):
        image.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    expected = np.asarray(image.convert("RGB")) if mode != "LA" else np.repeat(np.asarray(image)[..., :1], 3, 2)
    if mode == "RGBA":
        expected = np.asarray(image)[..., :3]  # alpha dropped, colours as stored
    return buf.getvalue(), expected


@FAST
@given(st.sampled_from(MODES), st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1))
def test_every_mode_decodes_to_the_documented_rgb(mode, h, w, seed):
    data, expected = _encode(mode, h, w, np.random.default_rng(seed))
    notes: list[str] = []
    rgb = decode_image(data, "x.png", notes)
    assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3)
    assert np.array_equal(rgb, expected)
    assert bool(notes) == (mode != "RGB")  # every conversion is reported, and only conversions


@FAST
@given(st.integers(1, 20), st.integers(1, 20), st.data())
def test_crops_stay_aligned_for_any_size_and_patch(h, w, data):
    patch = data.draw(st.integers(0, min(h, w)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hr = np.repeat(np.repeat(lr, 4, 0), 4, 1)  # every HR pixel knows its LR pixel
    lr_crop, hr_crop = random_pair_crop(lr, hr, patch, 4, tuple(int(v) for v in rng.integers(0, 2**63, 4)))
    edge = patch or None
    assert lr_crop.shape[:2] == ((edge, edge) if edge else lr_crop.shape[:2])
    assert hr_crop.shape[:2] == (4 * lr_crop.shape[0], 4 * lr_crop.shape[1])
    assert np.array_equal(hr_crop, np.repeat(np.repeat(lr_crop, 4, 0), 4, 1))


@settings(max_examples=15, deadline=None)
@given(
    rows=st.lists(
        st.tuples(names, st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4, unique_by=lambda t: t[0]
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_submission_csv_round_trips_any_ids_and_sizes(rows, seed, tmp_path_factory):
    rng = np.random.default_rng(seed)
    images = {image_id: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for image_id, h, w in rows}
    path = tmp_path_factory.mktemp("csv") / "s.csv"
    write_submission(path, ((i, encode_png(a)) for i, a in images.items()))
    back = read_submission(path)
    assert list(back) == list(images)
    assert all(np.array_equal(back[i], images[i]) for i in images)


@FAST
@given(
    st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".webp"]),
    st.integers(1, 70),
    st.integers(1, 70),
    st.sampled_from([1, 3, 4]),
    st.booleans(),
)
def test_the_header_size_is_the_decoded_size(ext, height, width, channels, lossless):
    # what the pixel limit and check-submission trust before decoding (WEBP: lossy VP8 and lossless VP8L)
    rng = np.random.default_rng(height * 71 + width)
    array = rng.integers(0, 256, (height, width, channels)[: 2 if channels == 1 else 3], dtype=np.uint8)
    if ext == ".jpg" and channels == 4:
        array = array[..., :3]
    params = [cv2.IMWRITE_WEBP_QUALITY, 101 if lossless else 80] if ext == ".webp" else []
    data = cv2.imencode(ext, array, params)[1].tobytes()
    assert header_size(data) == (width, height) == decode_image(data, "x").shape[1::-1]
