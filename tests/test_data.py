"""Reading the LAB4 layout: frame order, the tensor cache, clips, and a DataError for each broken data set."""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cvae.data
from cvae.config import TrainConfig
from cvae.data import load_frames, load_test_sequences, load_video_data
from cvae.errors import DataError
from cvae.metrics import copy_baselines


def resized(path: Path, height: int = 32, width: int = 64) -> torch.Tensor:
    """What the loader should make of one PNG."""
    with Image.open(path) as image:
        pixels = np.array(image.convert("RGB").resize((width, height), Image.BILINEAR))  # (H, W, 3) uint8
    return torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W) uint8


def raises(message: str):
    return pytest.raises(DataError, match=re.escape(message))


@pytest.fixture
def png_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The PNGs the loader decodes from now on."""
    reads: list[Path] = []
    read_png = cvae.data._read_png

    def counting(path: Path, frame_H: int, frame_W: int) -> np.ndarray:
        reads.append(path)
        return read_png(path, frame_H, frame_W)

    monkeypatch.setattr(cvae.data, "_read_png", counting)
    return reads


def test_frames_come_in_numeric_order_at_the_requested_size(small_dataset: Path) -> None:
    frames = load_frames(small_dataset, "train", 32, 64)
    assert frames.images.shape == frames.labels.shape == (96, 3, 32, 64)
    assert frames.images.dtype == frames.labels.dtype == torch.uint8
    # A name sort would put frame10 right after frame1.
    for n in (1, 2, 9, 10, 95):
        assert torch.equal(frames.images[n], resized(small_dataset / f"train/train_img/frame{n}.png"))
        assert torch.equal(frames.labels[n], resized(small_dataset / f"train/train_label/frame{n}.png"))


def test_frames_at_the_png_size_are_the_pngs(small_dataset: Path) -> None:
    frames = load_frames(small_dataset, "val", 64, 128)
    assert frames.images.shape == (40, 3, 64, 128)
    png = np.asarray(Image.open(small_dataset / "val/val_img/frame39.png"))  # (64, 128, 3) uint8
    assert torch.equal(frames.images[39], torch.from_numpy(png.copy()).permute(2, 0, 1))


def test_the_cache_is_written_once_then_read_without_opening_a_png(small_dataset_copy: Path,
                                                                    png_reads: list[Path]) -> None:
    first = load_frames(small_dataset_copy, "train", 32, 64)
    cache = small_dataset_copy / ".cache/train_32x64.pt"
    assert len(png_reads) == 2 * 96 and cache.is_file()
    written = cache.stat().st_mtime_ns

    second = load_frames(small_dataset_copy, "train", 32, 64)
    assert len(png_reads) == 2 * 96  # nothing decoded again
    assert cache.stat().st_mtime_ns == written
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_the_copy_baselines_are_computed_with_the_cache_and_cut_to_val_vi_len(small_dataset_copy: Path,
                                                                              png_reads: list[Path]) -> None:
    frames = load_frames(small_dataset_copy, "val", 32, 64)
    expected = copy_baselines(frames.images)
    assert torch.load(small_dataset_copy / ".cache/val_32x64.pt", weights_only=True)["baselines"]["first"].shape == (39,)
    reads = len(png_reads)
    data = load_video_data(TrainConfig(DR=str(small_dataset_copy), val_vi_len=10, train_vi_len=4))
    assert len(png_reads) == reads + 2 * 96  # the training split, decoded now; the validation split was cached
    assert data.baselines.first.tolist() == pytest.approx(expected.first[:9].tolist())
    assert data.baselines.previous.tolist() == pytest.approx(expected.previous[:9].tolist())
    assert data.baselines.first[0] > data.baselines.first[-1]  # the dancer moves away from where it began


def test_each_resolution_and_split_has_its_own_cache(small_dataset_copy: Path) -> None:
    load_frames(small_dataset_copy, "train", 32, 64)
    load_frames(small_dataset_copy, "train", 16, 32)
    load_frames(small_dataset_copy, "val", 32, 64)
    load_test_sequences(small_dataset_copy, 32, 64)
    assert sorted(p.name for p in (small_dataset_copy / ".cache").iterdir()) == [
        "test_32x64.pt", "train_16x32.pt", "train_32x64.pt", "val_32x64.pt"]


def test_rewriting_a_png_invalidates_the_cache(small_dataset_copy: Path, png_reads: list[Path]) -> None:
    load_frames(small_dataset_copy, "train", 32, 64)
    label = small_dataset_copy / "train/train_label/frame3.png"
    Image.new("RGB", (128, 64), (255, 255, 255)).save(label)
    # An explicit later mtime, in case the file system's clock ticks too coarsely to see the rewrite.
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))

    frames = load_frames(small_dataset_copy, "train", 32, 64)
    assert len(png_reads) == 2 * 2 * 96
    assert torch.all(frames.labels[3] == 255)


def test_an_unwritable_cache_folder_only_costs_a_warning(small_dataset_copy: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # A file where the cache folder should be fails like a read-only data root, even for root, who may write anywhere.
    (small_dataset_copy / ".cache").write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="cvae.data"):
        frames = load_frames(small_dataset_copy, "val", 32, 64)
    assert frames.images.shape == (40, 3, 32, 64)
    assert "cannot write the frame cache" in caplog.text


def test_a_corrupt_cache_is_decoded_again_and_replaced(small_dataset_copy: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    expected = load_frames(small_dataset_copy, "val", 32, 64)
    cache = small_dataset_copy / ".cache/val_32x64.pt"
    cache.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="cvae.data"):
        frames = load_frames(small_dataset_copy, "val", 32, 64)
    assert "ignoring the unreadable cache" in caplog.text
    assert torch.equal(frames.images, expected.images)
    assert cache.stat().st_size > 40 * 3 * 32 * 64


def test_clips_are_consecutive_chunks_of_train_vi_len_frames(small_dataset: Path) -> None:
    frames = load_frames(small_dataset, "train", 32, 64)
    data = load_video_data(TrainConfig(DR=str(small_dataset), train_vi_len=10, val_vi_len=30))
    # 96 frames make 9 clips of 10; the last 6 frames are dropped.
    assert data.train_images.shape == data.train_labels.shape == (9, 10, 3, 32, 64)
    assert torch.equal(data.train_images[2, 3], frames.images[23])
    assert torch.equal(data.train_labels[8, 9], frames.labels[89])
    assert torch.equal(data.train_images.reshape(90, 3, 32, 64), frames.images[:90])
    val = load_frames(small_dataset, "val", 32, 64)
    assert torch.equal(data.val_images, val.images[:30]) and torch.equal(data.val_labels, val.labels[:30])


@pytest.mark.parametrize("partial, clips", [(1.0, 6), (0.5, 3), (0.34, 2), (0.01, 1)])
def test_partial_keeps_the_first_clips(small_dataset: Path, partial: float, clips: int) -> None:
    data = load_video_data(TrainConfig(DR=str(small_dataset), partial=partial, val_vi_len=40))
    full = load_video_data(TrainConfig(DR=str(small_dataset), val_vi_len=40))
    assert data.train_images.shape == (clips, 16, 3, 32, 64)
    assert torch.equal(data.train_images, full.train_images[:clips])


def test_a_short_validation_video_names_val_vi_len(small_dataset: Path) -> None:
    with raises(f"val video in {small_dataset / 'val'} has 40 frames but val_vi_len=630; "
                "pass --val_vi_len 40 or less"):
        load_video_data(TrainConfig(DR=str(small_dataset)))


def test_too_few_training_frames_for_one_clip_names_train_vi_len(small_dataset: Path) -> None:
    with raises(f"{small_dataset / 'train/train_img'} has 96 frames, fewer than train_vi_len=100"):
        load_video_data(TrainConfig(DR=str(small_dataset), train_vi_len=100, val_vi_len=40))


def test_test_sequences_hold_the_first_frame_and_every_pose(small_dataset: Path) -> None:
    sequences = load_test_sequences(small_dataset, 32, 64)
    assert list(sequences) == ["seq0", "seq1"]
    seq = sequences["seq1"]
    assert seq.first_frame.shape == (3, 32, 64) and seq.labels.shape == (40, 3, 32, 64)
    assert seq.images is None  # the lab's test split has the first frame only
    assert torch.equal(seq.first_frame, resized(small_dataset / "test/test_img/seq1/frame0.png"))
    assert torch.equal(seq.labels[39], resized(small_dataset / "test/test_label/seq1/frame39.png"))


def test_test_sequences_sort_naturally_and_may_hold_every_frame(small_dataset_copy: Path) -> None:
    test = small_dataset_copy / "test"
    shutil.copytree(test / "test_img/seq1", test / "test_img/seq10")
    shutil.copytree(test / "test_label/seq1", test / "test_label/seq10")
    shutil.copytree(small_dataset_copy / "val/val_img", test / "test_img/seq2")
    shutil.copytree(small_dataset_copy / "val/val_label", test / "test_label/seq2")

    sequences = load_test_sequences(small_dataset_copy, 32, 64)
    assert list(sequences) == ["seq0", "seq1", "seq2", "seq10"]
    val = load_frames(small_dataset_copy, "val", 32, 64)
    assert torch.equal(sequences["seq2"].images, val.images)
    assert torch.equal(sequences["seq2"].first_frame, val.images[0])
    assert sequences["seq10"].images is None


# Each broken data set below must give one DataError naming the file or folder at fault.

def test_a_missing_data_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    message = f"data root {root} does not exist; generate one with `python -m cvae.synthetic {root}`"
    with raises(message):
        load_video_data(TrainConfig(DR=str(root)))
    with raises(message):
        load_test_sequences(root, 32, 64)


def test_a_missing_split_folder(small_dataset_copy: Path) -> None:
    shutil.rmtree(small_dataset_copy / "val")
    with raises(f"split folder {small_dataset_copy / 'val'} does not exist"):
        load_frames(small_dataset_copy, "val", 32, 64)


def test_a_missing_label_folder(small_dataset_copy: Path) -> None:
    shutil.rmtree(small_dataset_copy / "train/train_label")
    with raises(f"{small_dataset_copy / 'train/train_label'} does not exist"):
        load_frames(small_dataset_copy, "train", 32, 64)


def test_an_empty_folder(small_dataset_copy: Path) -> None:
    folder = small_dataset_copy / "val/val_img"
    for png in folder.iterdir():
        png.unlink()
    with raises(f"{folder} is empty; expected frame0.png, frame1.png, ..."):
        load_frames(small_dataset_copy, "val", 32, 64)


def test_a_missing_label(small_dataset_copy: Path) -> None:
    train = small_dataset_copy / "train"
    (train / "train_label/frame17.png").unlink()
    with raises(f"no label for {train / 'train_img/frame17.png'}: {train / 'train_label/frame17.png'} is missing "
                f"(96 images in {train / 'train_img'}, 95 labels in {train / 'train_label'})"):
        load_frames(small_dataset_copy, "train", 32, 64)


def test_a_label_without_its_image(small_dataset_copy: Path) -> None:
    val = small_dataset_copy / "val"
    (val / "val_img/frame39.png").unlink()
    with raises(f"no image for {val / 'val_label/frame39.png'}: {val / 'val_img/frame39.png'} is missing "
                f"(39 images in {val / 'val_img'}, 40 labels in {val / 'val_label'})"):
        load_frames(small_dataset_copy, "val", 32, 64)


def test_a_gap_in_the_frame_numbers(small_dataset_copy: Path) -> None:
    train = small_dataset_copy / "train"
    for folder in ("train_img", "train_label"):
        (train / folder / "frame17.png").unlink()
    with raises(f"frame17.png missing between frame16.png and frame18.png in {train / 'train_img'}"):
        load_frames(small_dataset_copy, "train", 32, 64)


def test_a_missing_first_frame(small_dataset_copy: Path) -> None:
    val = small_dataset_copy / "val"
    for folder in ("val_img", "val_label"):
        (val / folder / "frame0.png").unlink()
    with raises(f"frame0.png missing in {val / 'val_img'} (the first frame is frame1.png)"):
        load_frames(small_dataset_copy, "val", 32, 64)


def test_a_file_not_named_like_a_frame(small_dataset_copy: Path) -> None:
    folder = small_dataset_copy / "train/train_img"
    (folder / "frame5.png").rename(folder / "image5.png")
    with raises(f"{folder / 'image5.png'}: not a file named frame<N>.png"):
        load_frames(small_dataset_copy, "train", 32, 64)


def test_two_files_for_one_frame_number(small_dataset_copy: Path) -> None:
    folder = small_dataset_copy / "val/val_label"
    shutil.copy(folder / "frame5.png", folder / "frame05.png")
    with raises(f"{folder / 'frame05.png'} and {folder / 'frame5.png'} both hold frame 5"):
        load_frames(small_dataset_copy, "val", 32, 64)


@pytest.mark.parametrize("keep, reason", [(lambda data: data[:10], "cannot identify image file"),
                                          (lambda data: data[: len(data) // 2], "truncated")])
def test_an_unreadable_png(small_dataset_copy: Path, keep, reason: str) -> None:
    png = small_dataset_copy / "train/train_img/frame7.png"
    png.write_bytes(keep(png.read_bytes()))
    with pytest.raises(DataError, match=re.escape(f"cannot read {png}: ") + f".*{reason}"):
        load_frames(small_dataset_copy, "train", 32, 64)
    assert not (small_dataset_copy / ".cache").exists()


def test_a_test_sequence_without_its_image_folder(small_dataset_copy: Path) -> None:
    test = small_dataset_copy / "test"
    shutil.rmtree(test / "test_img/seq1")
    with raises(f"test sequence seq1 has labels in {test / 'test_label/seq1'} but no folder {test / 'test_img/seq1'}"):
        load_test_sequences(small_dataset_copy, 32, 64)


def test_a_test_sequence_with_some_of_its_frames(small_dataset_copy: Path) -> None:
    test = small_dataset_copy / "test"
    for n in (1, 2):
        shutil.copy(test / "test_label/seq0/frame0.png", test / f"test_img/seq0/frame{n}.png")
    with raises(f"{test / 'test_img/seq0'} has 3 frames; expected frame0.png only or all 40 frames"):
        load_test_sequences(small_dataset_copy, 32, 64)


def test_a_test_sequence_with_images_but_no_labels(small_dataset_copy: Path) -> None:
    test = small_dataset_copy / "test"
    shutil.copytree(test / "test_img/seq1", test / "test_img/seq7")
    with raises(f"test sequence seq7 has images in {test / 'test_img/seq7'} but no labels in "
                f"{test / 'test_label/seq7'}"):
        load_test_sequences(small_dataset_copy, 32, 64)


def test_a_frame_replaced_by_one_of_the_same_size_and_time_stamp_is_decoded_again(small_dataset_copy: Path) -> None:
    label = small_dataset_copy / "train/train_label/frame3.png"
    Image.new("RGB", (128, 64), (10, 20, 30)).save(label, compress_level=0)  # uncompressed: the size is the shape's
    assert load_frames(small_dataset_copy, "train", 64, 128).labels[3, :, 0, 0].tolist() == [10, 20, 30]
    stamp = label.stat()
    Image.new("RGB", (128, 64), (200, 100, 50)).save(label, compress_level=0)
    os.utime(label, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (label.stat().st_size, label.stat().st_mtime_ns) == (stamp.st_size, stamp.st_mtime_ns)

    frames = load_frames(small_dataset_copy, "train", 64, 128)
    assert frames.labels[3].reshape(3, -1).unique(dim=1).tolist() == [[200], [100], [50]]


def test_16_bit_gray_pngs_decode_to_their_high_byte(small_dataset_copy: Path) -> None:
    png = small_dataset_copy / "val/val_img/frame5.png"
    gray = (np.arange(64 * 128, dtype=np.uint32).reshape(64, 128) * 8).astype(np.uint16)  # 0 ... 65528
    Image.fromarray(gray).save(png)
    assert Image.open(png).mode == "I;16"  # PIL's convert("RGB") would clip all but the darkest to white
    frames = load_frames(small_dataset_copy, "val", 64, 128)
    assert torch.equal(frames.images[5], torch.from_numpy(np.stack([gray >> 8] * 3).astype(np.uint8)))


def test_palette_and_gray_with_alpha_pngs_decode_to_their_colours(small_dataset_copy: Path) -> None:
    img_dir = small_dataset_copy / "val/val_img"
    indices = (np.arange(64 * 128).reshape(64, 128) % 16).astype(np.uint8)
    palette = np.array([(10 * i, 255 - 10 * i, 7) for i in range(16)], dtype=np.uint8)  # (16, 3)
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.reshape(-1).tolist())
    paletted.save(img_dir / "frame6.png")
    gray_alpha = np.stack([np.full((64, 128), 100, np.uint8), np.full((64, 128), 50, np.uint8)], axis=-1)
    Image.fromarray(gray_alpha, mode="LA").save(img_dir / "frame7.png")
    assert [Image.open(img_dir / f"frame{n}.png").mode for n in (6, 7)] == ["P", "LA"]

    frames = load_frames(small_dataset_copy, "val", 64, 128)
    assert torch.equal(frames.images[6], torch.from_numpy(palette[indices]).permute(2, 0, 1))
    assert torch.all(frames.images[7] == 100)  # the gray value; the alpha is dropped


def test_a_frame_of_float_pixels_is_refused_by_name(small_dataset_copy: Path) -> None:
    png = small_dataset_copy / "val/val_img/frame5.png"
    Image.fromarray(np.full((64, 128), 0.5, np.float32)).save(png, format="TIFF")  # PIL reads a file by its content
    with raises(f"cannot read {png}: its pixels are floats (PIL mode F); save the frames as 8-bit RGB PNGs"):
        load_frames(small_dataset_copy, "val", 64, 128)


def test_frames_too_large_for_memory_are_refused_before_decoding(small_dataset: Path) -> None:
    with pytest.raises(DataError, match=r"^the val split's 80 images and pose maps at 1000000x1000000 need "
                                        r"[\d,.]+ GiB, more than the [\d,.]+ GiB of memory available; "
                                        r"pass a smaller --frame_H/--frame_W$"):
        load_frames(small_dataset, "val", 10**6, 10**6)
