import numpy as np
import pytest
import torch

from cvae.metrics import copy_baselines, frame_scores, psnr, save_psnr_csv, ssim


def numpy_psnr(prediction, target):
    mse = np.mean((prediction.astype(np.float64) - target.astype(np.float64)) ** 2)
    return 10 * np.log10(1.0 / mse)


def test_psnr_per_sample_matches_numpy_reference():
    rng = np.random.default_rng(0)
    target = rng.random((2, 3, 8, 16))
    prediction = target.copy()
    prediction[0] += 0.01  # small error: 40 dB
    prediction[1] += rng.normal(0, 0.2, size=(3, 8, 16))  # large error
    got = psnr(torch.tensor(prediction), torch.tensor(target)).numpy()
    assert got.shape == (2,)
    assert got[0] == np.float32(40.0) or abs(got[0] - 40.0) < 1e-3
    assert abs(got[1] - numpy_psnr(prediction[1], target[1])) < 1e-3
    # the lab's batch-mean MSE would give one number between the two
    batch_mean = numpy_psnr(prediction, target)
    assert got[1] < batch_mean < got[0]


def test_psnr_of_identical_frames_is_capped():
    frame = torch.rand(3, 4, 4)
    assert psnr(frame, frame).item() == 100.0


def test_psnr_agrees_with_torchmetrics_to_two_hundred_thousandths_of_a_db():
    # on frames from 12 to 80 dB, noisy and quantised to 8 bits as the videos are
    from torchmetrics.functional.image import peak_signal_noise_ratio

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(50, 3, 32, 64, generator=generator)
    for noise in (0.3, 0.01, 1e-4):
        prediction = (target + noise * torch.randn(target.shape, generator=generator)).clamp(0, 1)
        for frames, truth in ((prediction, target), ((prediction * 255).round() / 255, (target * 255).round() / 255)):
            theirs = peak_signal_noise_ratio(frames, truth, data_range=1.0, reduction="none", dim=(1, 2, 3))
            assert psnr(frames, truth) == pytest.approx(theirs, abs=2e-5)  # two float32 steps at 80 dB


def test_importing_the_metrics_leaves_torchmetrics_to_the_first_ssim():
    import subprocess
    import sys

    check = ("import sys, cvae.data, cvae.train; assert 'torchmetrics' not in sys.modules; "
             "import torch; from cvae.metrics import ssim; ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16)); "
             "assert 'torchmetrics' in sys.modules")
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)


def test_ssim_per_frame_is_one_for_a_perfect_frame_and_falls_with_the_error():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(3, 3, 32, 64, generator=generator)
    noise = torch.randn(target.shape, generator=generator) * torch.tensor([0.0, 0.05, 0.3]).view(3, 1, 1, 1)
    scores = ssim((target + noise).clamp(0, 1), target)
    assert scores.shape == (3,) and scores[0].item() == pytest.approx(1.0, abs=1e-4)
    assert 1 > scores[1] > scores[2] > 0
    assert ssim(target[1], target[2]).shape == ()  # one frame


def test_frame_scores_of_a_video_are_float64_per_frame():
    video = torch.rand(5, 3, 16, 32, generator=torch.Generator().manual_seed(2))
    scores = frame_scores(video[:-1], video[1:])
    assert scores.psnr.shape == scores.ssim.shape == (4,) and scores.ssim.dtype == np.float64
    assert scores.psnr.tolist() == psnr(video[:-1], video[1:]).double().tolist()


def test_copy_baselines_per_frame():
    video = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    video[2:] = 255  # frame 1 equals frame 0, frames 2 and 3 are all wrong against it; 3 equals 2
    baselines = copy_baselines(video)
    assert baselines.first.tolist() == [100.0, 0.0, 0.0]
    assert baselines.previous.tolist() == [100.0, 0.0, 100.0]
    assert baselines.first_mean == pytest.approx(100 / 3) and baselines.previous_mean == pytest.approx(200 / 3)
    assert baselines.upto(3).first.tolist() == [100.0, 0.0]


def test_psnr_csv(tmp_path):
    path = save_psnr_csv(tmp_path / "psnr.csv", np.array([30.0, 25.5]))
    assert path.read_text() == "frame,psnr\n1,30.000000\n2,25.500000\n"
