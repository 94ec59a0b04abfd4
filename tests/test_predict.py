import math
import re
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from cvae import checkpoint
from cvae.config import TrainConfig
from cvae.data import load_test_sequences, load_video_data
from cvae.metrics import save_psnr_csv
from cvae.predict import predict
from cvae.train import fit
from cvae.video import PANEL_GAP
from test_run_folder import one_line_error, read_only

TINY = dict(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16, train_vi_len=4, val_vi_len=8, batch_size=4,
            num_epoch=1, seed=5, device="cpu", channels_last=False)
ZOOM = 3  # save_gif's default
H, W = 32, 64  # the small data set's frames
TEST_FRAMES = 40  # frames per test sequence of the small data set


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A checkpoint of one epoch on the small data set, and the trainer's history."""
    cfg = TrainConfig(DR=str(small_dataset), save_root=str(tmp_path_factory.mktemp("run")), **TINY)
    history = fit(cfg, load_video_data(cfg), progress=False)
    return history.last_checkpoint, history


def run_predict(*args):
    return subprocess.run([sys.executable, "-m", "cvae", "predict", *map(str, args)], capture_output=True, text=True)


def png(path):
    return np.asarray(Image.open(path)).transpose(2, 0, 1)  # (3, H, W) uint8


def test_predict_writes_frames_gifs_and_submission(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    result = predict(ckpt, tmp_path, samples=2, progress=False)

    assert [s.name for s in result.sequences] == ["seq0", "seq1"]
    assert result.seed == TINY["seed"]
    for name in ("seq0", "seq1"):
        for folder in (name, f"{name}_sample1"):
            assert sorted(p.name for p in (tmp_path / folder).iterdir()) == \
                sorted(f"frame{n}.png" for n in range(TEST_FRAMES))
        gif = iio.imread(tmp_path / f"{name}.gif", index=None)
        # two samples and the pose map (the small test split has no ground truth), zoomed 3 times
        assert gif.shape[:3] == (TEST_FRAMES, ZOOM * H, ZOOM * (3 * W + 2 * PANEL_GAP))
    first_given = load_test_sequences(small_dataset, H, W)["seq0"].first_frame.numpy()  # (3, H, W) uint8
    assert (png(tmp_path / "seq0/frame0.png") == first_given).all()
    assert not (png(tmp_path / "seq0/frame39.png") == png(tmp_path / "seq0_sample1/frame39.png")).all()

    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0].split(",") == ["id"] + [str(i) for i in range(3 * H * W)]
    rows = np.array([line.split(",") for line in lines[1:]], dtype=np.int64)
    assert rows.shape == (2 * TEST_FRAMES, 1 + 3 * H * W)
    assert (rows[:, 0] == np.arange(2 * TEST_FRAMES)).all()
    assert rows[:, 1:].min() >= 0 and rows[:, 1:].max() <= 255
    assert (rows[0, 1:] == first_given.reshape(-1)).all()
    assert (rows[TEST_FRAMES + 7, 1:] == png(tmp_path / "seq1/frame7.png").reshape(-1)).all()  # C, H, W order
    assert not (tmp_path / "submission.csv.partial").exists()


def test_val_psnr_is_the_trainers(trained, tmp_path):
    ckpt, history = trained
    result = predict(ckpt, tmp_path, split="val", progress=False)

    trainers = history.epochs[-1].val_psnr_per_frame
    predicted = result.sequences[0].psnr_per_frame[0]
    assert predicted.shape == (TINY["val_vi_len"] - 1,)
    assert (predicted == trainers).all()
    assert (tmp_path / "val_psnr_per_frame.csv").read_text() == \
        save_psnr_csv(tmp_path / "trainer.csv", trainers).read_text()
    assert Image.open(tmp_path / "val_psnr_per_frame.png").size[0] > 400
    gif = iio.imread(tmp_path / "val.gif", index=None)
    # prediction | ground truth | pose
    assert gif.shape[:3] == (TINY["val_vi_len"], ZOOM * H, ZOOM * (3 * W + 2 * PANEL_GAP))
    assert len((tmp_path / "submission.csv").read_text().splitlines()) == 1 + TINY["val_vi_len"]


def test_corrupt_checkpoint_is_one_line(small_dataset, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    done = run_predict("--ckpt", bad, "--DR", small_dataset, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: checkpoint {bad} is corrupt or not a checkpoint (UnpicklingError)"]


def test_checkpoint_of_another_shape_is_one_line(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    state = checkpoint.load(ckpt)
    state["config"]["F_dim"] = 32  # the weights were trained with F_dim=16
    edited = tmp_path / "edited.ckpt"
    torch.save(state, edited)
    done = run_predict("--ckpt", edited, "--DR", small_dataset, "--out", tmp_path / "out")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: checkpoint {edited} holds weights of another shape than the model its config "
                           f"describes (F_dim=32, L_dim=8, N_dim=2, D_out_dim=16): frame_transformation.")
    assert not (tmp_path / "out").exists()


def test_predict_on_val_prints_the_copy_baselines(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    done = run_predict("--ckpt", ckpt, "--out", tmp_path / "out", "--split", "val")
    assert done.returncode == 0, done.stderr
    expected = load_video_data(checkpoint.config_of(checkpoint.load(ckpt), ckpt)).baselines
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"copying the first frame forward gives {expected.first_mean:.2f} dB")
    assert f"copying the previous true frame {expected.previous_mean:.2f} dB" in last


def test_a_checkpoint_of_non_finite_weights_is_refused_before_anything_is_written(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    state = checkpoint.load(ckpt)
    name = "frame_transformation.0.body.0.weight"
    state["model"][name] = torch.full_like(state["model"][name], math.nan)
    broken = tmp_path / "nan.ckpt"
    torch.save(state, broken)
    done = run_predict("--ckpt", broken, "--DR", small_dataset, "--out", tmp_path / "out")
    assert one_line_error(done) == (f"error: checkpoint {broken} holds non-finite weights: 1 tensors, first {name} with "
                              f"{state['model'][name].numel()} NaN and 0 infinite values; the file is damaged, or "
                              f"was saved after training diverged")
    assert not (tmp_path / "out").exists()  # no all-zero submission.csv


def test_an_out_that_is_a_file_is_one_line_and_left_alone(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    taken = tmp_path / "taken"
    taken.write_text("someone's notes\n")
    done = run_predict("--ckpt", ckpt, "--DR", small_dataset, "--out", taken)
    assert one_line_error(done) == f"error: --out {taken} is a file; give a folder"
    assert taken.read_text() == "someone's notes\n"


def test_a_read_only_out_is_one_line(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        done = run_predict("--ckpt", ckpt, "--DR", small_dataset, "--out", locked / "predictions")
    assert re.fullmatch(rf"error: cannot write into --out {locked / 'predictions'} \((Read-only file system|"
                        r"Permission denied)\); give a folder you can write to", one_line_error(done))
    assert not any(locked.iterdir())


def test_a_seed_beyond_63_bits_is_one_line(trained, small_dataset, tmp_path):
    ckpt, _ = trained
    done = run_predict("--ckpt", ckpt, "--DR", small_dataset, "--out", tmp_path / "out", "--seed", 2**64)
    assert one_line_error(done) == "error: seed=18446744073709551616: must be between 0 and 2**63-1 (9223372036854775807)"
    assert not (tmp_path / "out").exists()
