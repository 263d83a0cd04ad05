import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from insanesr_dist.data.tensors import to_uint8
from insanesr_dist.scoring.metrics import joint_metric, piq_psnr_ssim, psnr_ssim


def grader(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The seed report's grader, as the competition runs it."""
    return (peak_signal_noise_ratio(a, b, data_range=255), structural_similarity(a, b, channel_axis=-1, data_range=255))


def image_pairs():
    rng = np.random.default_rng(1)
    yield "noise", rng.integers(0, 256, (40, 56, 3), np.uint8), rng.integers(0, 256, (40, 56, 3), np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, 64)[None, :, None], (31, 64, 3)).astype(np.uint8)
    yield "gradient+noise", ramp, np.clip(ramp + rng.normal(0, 6, ramp.shape), 0, 255).astype(np.uint8)
    yield "smallest", rng.integers(0, 256, (7, 7, 3), np.uint8), rng.integers(0, 256, (7, 7, 3), np.uint8)
    flat = np.full((20, 9, 3), 17, np.uint8)
    yield "flat vs shifted", flat, flat + 3
    big = rng.integers(0, 256, (257, 300, 3), np.uint8)
    yield "large, near", big, np.clip(big.astype(int) + rng.integers(-2, 3, big.shape), 0, 255).astype(np.uint8)
    blocky = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    yield "blocky vs blurred", blocky, (blocky // 2 + 60).astype(np.uint8)


@pytest.mark.parametrize("name,a,b", list(image_pairs()), ids=[p[0] for p in image_pairs()])
def test_matches_the_scikit_image_grader(name, a, b):
    psnr, ssim = psnr_ssim(a, b)[0].tolist()
    ref_psnr, ref_ssim = grader(a, b)
    assert abs(psnr - ref_psnr) <= 1e-9
    assert abs(ssim - ref_ssim) <= 1e-9
    assert abs(joint_metric(psnr, ssim) - (40 * ref_ssim + ref_psnr)) <= 1e-9


def test_batch_scores_equal_per_image_scores():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (3, 24, 30, 3), np.uint8)
    b = np.clip(a + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    batch = psnr_ssim(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2))
    for i in range(3):
        assert torch.allclose(batch[i], torch.tensor(grader(a[i], b[i]), dtype=torch.float64), atol=1e-9, rtol=0)


def test_identical_images_have_infinite_psnr_like_the_grader():
    a = np.random.default_rng(3).integers(0, 256, (9, 9, 3), np.uint8)
    psnr, ssim = psnr_ssim(a, a)[0].tolist()
    assert psnr == np.inf and ssim == pytest.approx(1.0, abs=1e-12)


def test_rejects_what_the_grader_cannot_score():
    a = np.zeros((6, 9, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 7x7"):
        psnr_ssim(a, a)
    with pytest.raises(TypeError, match="uint8"):
        psnr_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr_ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))


def test_to_uint8_rounds_like_the_png_stores():
    x = torch.tensor([-0.5, 0.0, 0.6 / 255, 0.4 / 255, 1.2, 254.6 / 255, 100.4 / 255])
    assert to_uint8(x).tolist() == [0, 0, 1, 0, 255, 255, 100]


def test_piq_scores_are_close_but_not_the_grader():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (1, 3, 64, 64), np.uint8)
    b = np.clip(a + rng.integers(-25, 25, a.shape), 0, 255).astype(np.uint8)
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    ours, theirs = psnr_ssim(a, b)[0], piq_psnr_ssim(a, b)[0]
    assert abs(ours[0] - theirs[0]) < 1e-3  # PSNR: same formula, float32 and an epsilon
    assert ours[1] != theirs[1] and abs(ours[1] - theirs[1]) < 0.05  # SSIM: another window
