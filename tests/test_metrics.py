import numpy as np
import pytest
import torch

from cvae.metrics import copy_baselines, psnr, save_psnr_csv


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
