"""The synthetic dance data set: layout, determinism, what labels and frames show."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvae.errors import DataError
from cvae.synthetic import (LIMB_COLOURS, SMALL, Sizes, draw_frame, draw_label, ensure_dataset, generate, main,
                            make_dancer, pose_at, save_sample_grid)

H, W = SMALL.height, SMALL.width  # 64 x 128
BLACK = (0, 0, 0)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))  # (H, W, 3) uint8


def frame_names(count: int) -> set[str]:
    return {f"frame{n}.png" for n in range(count)}


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_layout_holds_the_lab_folders_and_counts(small_dataset: Path) -> None:
    root = small_dataset
    assert names(root / "train/train_img") == names(root / "train/train_label") == frame_names(2 * 48)
    assert names(root / "val/val_img") == names(root / "val/val_label") == frame_names(40)
    assert names(root / "test/test_img") == names(root / "test/test_label") == {"seq0", "seq1"}
    for seq in ("seq0", "seq1"):
        assert names(root / f"test/test_img/{seq}") == {"frame0.png"}
        assert names(root / f"test/test_label/{seq}") == frame_names(40)


def test_every_png_is_rgb_at_the_requested_size(small_dataset: Path) -> None:
    for path in small_dataset.rglob("*.png"):
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("RGB", (128, 64)), path


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_ones(small_dataset: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=0, small=True)
    files = sorted(p.relative_to(small_dataset) for p in small_dataset.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((small_dataset / f).read_bytes() == (again / f).read_bytes() for f in files)

    other = generate(tmp_path / "other", seed=1, small=True)
    for f in ("train/train_img/frame0.png", "train/train_label/frame0.png", "val/val_img/frame0.png"):
        assert (small_dataset / f).read_bytes() != (other / f).read_bytes()


def test_labels_are_the_twelve_limb_colours_on_black(small_dataset: Path) -> None:
    for n in range(0, 96, 5):
        frame = pixels(small_dataset / f"train/train_label/frame{n}.png")
        colours, counts = np.unique(frame.reshape(-1, 3), axis=0, return_counts=True)
        colours = [tuple(c) for c in colours.tolist()]
        assert set(colours) == set(LIMB_COLOURS.values()) | {BLACK}, n
        assert counts[colours.index(BLACK)] > 0.9 * H * W  # a thin skeleton on a black background


def test_rgb_frames_move_in_front_of_a_fixed_wall_and_floor(small_dataset: Path) -> None:
    look = make_dancer(0, "train", 0).appearance
    frames = [pixels(small_dataset / f"train/train_img/frame{n}.png") for n in range(48)]
    for frame in frames:
        # The corners are never reached by the dancer: the top one shows the wall, the bottom one the floor.
        assert tuple(frame[0, 0]) == look.wall
        assert tuple(frame[H - 1, 0]) == look.floor
    for before, after in zip(frames, frames[1:]):
        changed = np.any(before != after, axis=2).sum()
        assert 20 < changed < 0.3 * H * W  # the dancer moves a little every frame


def test_each_video_has_its_own_look(small_dataset: Path) -> None:
    first, second = (pixels(small_dataset / f"train/train_img/frame{n}.png") for n in (0, 48))
    assert tuple(first[0, 0]) != tuple(second[0, 0])
    looks = [make_dancer(0, "train", i).appearance for i in range(12)]
    assert len({(look.wall, look.shirt, look.trousers) for look in looks}) == 12


def test_validation_and_test_dancers_are_not_training_ones() -> None:
    training = [make_dancer(0, "train", i).appearance for i in range(12)]
    for split, count in (("val", 1), ("test", 5)):
        for i in range(count):
            assert make_dancer(0, split, i).appearance not in training


def test_a_label_is_the_pose_drawn_and_a_frame_the_pose_dressed(small_dataset: Path) -> None:
    for video in range(2):
        dancer = make_dancer(0, "train", video)
        for t in (0, 17, 47):
            pose = pose_at(dancer, t, H, W)
            number = video * 48 + t
            label = np.asarray(draw_label(pose, H, W))
            assert np.array_equal(label, np.asarray(draw_label(pose, H, W)))
            assert np.array_equal(label, pixels(small_dataset / f"train/train_label/frame{number}.png"))
            assert np.array_equal(np.asarray(draw_frame(pose, dancer.appearance, H, W)),
                                  pixels(small_dataset / f"train/train_img/frame{number}.png"))


def test_the_dancer_stays_inside_the_frame() -> None:
    for split, index in [("train", i) for i in range(12)] + [("val", 0)] + [("test", i) for i in range(5)]:
        dancer = make_dancer(0, split, index)
        for t in range(0, 630, 3):
            for x, y in pose_at(dancer, t, H, W).joints.values():
                assert 0 <= x < W and 0 <= y < H, (split, index, t)


def test_training_videos_must_hold_whole_16_frame_clips(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_frames=50: must be a multiple of 16"):
        Sizes(train_frames=50)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), "--small", "--train-frames", "50"])
    assert exit_info.value.code == 2


def test_generate_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"{tmp_path} already exists and is not an empty folder"):
        generate(tmp_path, small=True)
    assert names(tmp_path) == {"notes.txt"}


def test_the_command_line_writes_the_chosen_sizes(tmp_path: Path) -> None:
    assert main([str(tmp_path / "out"), "--small", "--seed", "3", "--train-videos", "1", "--test-seqs", "1"]) == 0
    assert names(tmp_path / "out/train/train_img") == frame_names(48)
    assert names(tmp_path / "out/test/test_label") == {"seq0"}
    assert names(tmp_path) == {"out"}  # no staging folder left behind


def test_ensure_dataset_generates_only_when_the_root_is_missing(small_dataset: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small_dataset.rglob("*.png")}
    assert ensure_dataset(small_dataset) == small_dataset
    assert {p: p.stat().st_mtime_ns for p in small_dataset.rglob("*.png")} == before

    created = ensure_dataset(tmp_path / "fresh", small=True)
    assert names(created / "val/val_img") == frame_names(40)


def test_sample_grid_puts_labels_above_frames(small_dataset: Path, tmp_path: Path) -> None:
    path = save_sample_grid(small_dataset, tmp_path / "grid.png", frames_per_video=48, columns=4, stride=2, zoom=2)
    grid = pixels(path)
    assert grid.shape == (2 * 2 * H * 2, 4 * W * 2, 3)  # 2 videos x (label row, RGB row), enlarged twice
    label = pixels(small_dataset / "train/train_label/frame48.png")
    assert np.array_equal(grid[2 * H * 2: 3 * H * 2: 2, : W * 2: 2], label)  # video 1's first label
