"""The LAB4_Dataset layout on disk -> uint8 tensors (decoded once, then cached beside the data) -> training clips."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cvae.config import TrainConfig
from cvae.errors import DataError
from cvae.metrics import CopyBaselines, copy_baselines

log = logging.getLogger(__name__)

CACHE_DIR = ".cache"
CACHE_VERSION = 3  # part of every fingerprint: bump it when decoding or the fingerprint changes, to retire old caches
# a file's fingerprint reads this many bytes at each end: a PNG ends with the zlib checksum of all its pixels
SAMPLE_BYTES = 4096
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # how PIL opens a 16-bit grayscale PNG
FRAME_NAME = re.compile(r"frame(\d+)\.png")
SPLITS = ("train", "val")
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing


@dataclass(frozen=True)
class Frames:
    """One video folder pair, frame by frame."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N, 3, H, W) uint8, the pose map of each image
    baselines: CopyBaselines  # of the images as one video; computed once, with the cache


@dataclass(frozen=True)
class TestSequence:
    """One test sequence: its first frame and every pose map."""

    first_frame: torch.Tensor  # (3, H, W) uint8
    labels: torch.Tensor  # (T, 3, H, W) uint8
    images: torch.Tensor | None  # (T, 3, H, W) uint8, None where only the first frame exists (the lab's test split)


@dataclass(frozen=True)
class VideoData:
    """What training needs: the training clips and the validation video."""

    train_images: torch.Tensor  # (n_clips, T, 3, H, W) uint8
    train_labels: torch.Tensor  # (n_clips, T, 3, H, W) uint8
    val_images: torch.Tensor  # (T_val, 3, H, W) uint8
    val_labels: torch.Tensor  # (T_val, 3, H, W) uint8
    baselines: CopyBaselines  # copy-first and copy-previous PSNR of the validation video


class _File(NamedTuple):
    number: int
    path: Path
    size: int
    mtime_ns: int


def load_video_data(cfg: TrainConfig) -> VideoData:
    """The first `partial` of the clips of `train_vi_len` training frames; the first `val_vi_len` validation frames."""
    root = Path(cfg.DR)
    train = load_frames(root, "train", cfg.frame_H, cfg.frame_W)
    clip_len = cfg.train_vi_len
    n_clips = len(train.images) // clip_len  # like the lab, the frames after the last whole clip are dropped
    if n_clips == 0:
        raise DataError(f"{root / 'train' / 'train_img'} has {len(train.images)} frames, "
                        f"fewer than train_vi_len={clip_len}; pass --train_vi_len {len(train.images)} or less")
    kept = max(1, int(n_clips * cfg.partial))
    clip_shape = (kept, clip_len, 3, cfg.frame_H, cfg.frame_W)
    val = load_frames(root, "val", cfg.frame_H, cfg.frame_W)
    if len(val.images) < cfg.val_vi_len:
        raise DataError(f"val video in {root / 'val'} has {len(val.images)} frames but val_vi_len={cfg.val_vi_len}; "
                        f"pass --val_vi_len {len(val.images)} or less")
    return VideoData(
        train_images=train.images[: kept * clip_len].view(clip_shape),  # (n_clips, T, 3, H, W) uint8
        train_labels=train.labels[: kept * clip_len].view(clip_shape),
        val_images=val.images[: cfg.val_vi_len],  # (T_val, 3, H, W) uint8
        val_labels=val.labels[: cfg.val_vi_len],
        baselines=val.baselines.upto(cfg.val_vi_len),
    )


def load_frames(root: str | Path, split: str, frame_H: int, frame_W: int) -> Frames:
    """Every frame of `split` ("train" or "val") resized to frame_H x frame_W, in frame-number order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    root = Path(root)
    img_dir, label_dir = _split_dirs(root, split)
    images, labels = _list_frames(img_dir), _list_frames(label_dir)
    _check_pairs(images, img_dir, labels, label_dir)
    _check_consecutive(images, img_dir)

    def decode() -> dict:
        both = _decode([f.path for f in images + labels], frame_H, frame_W, split)  # (2N, 3, H, W) uint8
        return {"images": both[: len(images)], "labels": both[len(images):],
                "baselines": copy_baselines(both[: len(images)]).to_state()}

    cache = root / CACHE_DIR / f"{split}_{frame_H}x{frame_W}.pt"
    stored = _cached(cache, _fingerprint(root, images + labels), decode)
    return Frames(images=stored["images"], labels=stored["labels"],
                  baselines=CopyBaselines.from_state(stored["baselines"]))


def load_test_sequences(root: str | Path, frame_H: int, frame_W: int) -> dict[str, TestSequence]:
    """Every test sequence resized to frame_H x frame_W, by sequence name in natural order (seq2 before seq10)."""
    root = Path(root)
    img_root, label_root = _split_dirs(root, "test")
    names = sorted((entry.name for entry in os.scandir(label_root)
                    if entry.is_dir() and not entry.name.startswith(".")), key=natural_key)
    if not names:
        raise DataError(f"{label_root} has no sequence folders; expected one per test sequence, "
                        f"like {label_root / 'seq0'}")
    listed = []  # (labels, images) per sequence
    for name in names:
        img_dir, label_dir = img_root / name, label_root / name
        if not img_dir.is_dir():
            raise DataError(f"test sequence {name} has labels in {label_dir} but no folder {img_dir}")
        labels, images = _list_frames(label_dir), _list_frames(img_dir)
        _check_consecutive(labels, label_dir)
        if [f.number for f in images] not in ([0], [f.number for f in labels]):
            raise DataError(f"{img_dir} has {len(images)} frames; expected frame0.png only "
                            f"or all {len(labels)} frames, like {label_dir}")
        listed.append((labels, images))
    for entry in os.scandir(img_root):
        if entry.is_dir() and entry.name not in names and not entry.name.startswith("."):
            raise DataError(f"test sequence {entry.name} has images in {img_root / entry.name} "
                            f"but no labels in {label_root / entry.name}")
    files = [f for labels, images in listed for f in labels + images]

    def decode() -> dict:
        frames = _decode([f.path for f in files], frame_H, frame_W, "test")  # (all files, 3, H, W) uint8
        stored: dict = {"names": names, "labels": [], "images": []}
        start = 0
        for labels, images in listed:
            stored["labels"].append(frames[start: start + len(labels)])  # (T, 3, H, W) uint8
            stored["images"].append(frames[start + len(labels): start + len(labels) + len(images)])
            start += len(labels) + len(images)
        return stored

    cache = root / CACHE_DIR / f"test_{frame_H}x{frame_W}.pt"
    stored = _cached(cache, _fingerprint(root, files), decode)
    return {
        name: TestSequence(first_frame=images[0], labels=labels, images=images if len(images) == len(labels) else None)
        for name, labels, images in zip(stored["names"], stored["labels"], stored["images"])
    }


def _split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """The image and label folders of `split`, or a DataError saying which part of the layout is missing."""
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; generate one with `python -m cvae.synthetic {root}`")
    split_dir = root / split
    img_dir, label_dir = split_dir / f"{split}_img", split_dir / f"{split}_label"
    if not split_dir.is_dir():
        raise DataError(f"split folder {split_dir} does not exist; expected {img_dir} and {label_dir}")
    for folder in (img_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; the {split} split needs {img_dir} and {label_dir}")
    return img_dir, label_dir


def _list_frames(folder: Path) -> list[_File]:
    """The frame<N>.png files of `folder` by N; hidden entries are skipped, anything else is a DataError."""
    files = []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        match = FRAME_NAME.fullmatch(entry.name)
        if not match or not entry.is_file():
            raise DataError(f"{folder / entry.name}: not a file named frame<N>.png; "
                            f"{folder} must hold only frames like frame0.png")
        stat = entry.stat()
        files.append(_File(int(match.group(1)), folder / entry.name, stat.st_size, stat.st_mtime_ns))
    if not files:
        raise DataError(f"{folder} is empty; expected frame0.png, frame1.png, ...")
    files.sort()
    for before, after in zip(files, files[1:]):
        if before.number == after.number:
            raise DataError(f"{before.path} and {after.path} both hold frame {after.number}; keep one")
    return files


def _check_pairs(images: list[_File], img_dir: Path, labels: list[_File], label_dir: Path) -> None:
    """Every image has a label of the same name and every label an image."""
    counts = f"{len(images)} images in {img_dir}, {len(labels)} labels in {label_dir}"
    image_names, label_names = {f.path.name for f in images}, {f.path.name for f in labels}
    for f in images:
        if f.path.name not in label_names:
            raise DataError(f"no label for {f.path}: {label_dir / f.path.name} is missing ({counts})")
    for f in labels:
        if f.path.name not in image_names:
            raise DataError(f"no image for {f.path}: {img_dir / f.path.name} is missing ({counts})")


def _check_consecutive(files: list[_File], folder: Path) -> None:
    """The frames are numbered 0, 1, 2, ... without gaps, so position i is frame i."""
    if files[0].number != 0:
        raise DataError(f"frame0.png missing in {folder} (the first frame is {files[0].path.name})")
    for before, after in zip(files, files[1:]):
        if after.number != before.number + 1:
            raise DataError(f"frame{before.number + 1}.png missing between {before.path.name} "
                            f"and {after.path.name} in {folder}")


def natural_key(name: str) -> list:
    """Sort key that orders the digit runs of `name` as numbers: seq2 before seq10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def _fingerprint(root: Path, files: list[_File]) -> str:
    """A digest of the files' names, sizes, modification times and first and last SAMPLE_BYTES.

    The ends catch a file replaced by another of the same size and time stamp: a PNG's last bytes hold
    the checksum of all its pixels. A change that keeps the size, the time stamp and both ends of a
    file (an edit in the middle of a file that is not a PNG) goes unseen; delete `.cache` after one.
    """
    digest = hashlib.sha256(f"cache v{CACHE_VERSION}\n".encode())
    ordered = sorted(files, key=lambda f: f.path)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        ends = pool.map(_ends, ordered)
        for f, sample in zip(ordered, ends):
            digest.update(f"{f.path.relative_to(root).as_posix()}\0{f.size}\0{f.mtime_ns}\0".encode())
            digest.update(sample)
    return digest.hexdigest()


def _ends(f: _File) -> bytes:
    """The first and last SAMPLE_BYTES of a file (all of a small one); a DataError names it if it cannot be read."""
    try:
        with open(f.path, "rb") as file:
            head = file.read(SAMPLE_BYTES)
            file.seek(max(f.size - SAMPLE_BYTES, len(head)))
            return head + file.read(SAMPLE_BYTES)
    except OSError as err:
        raise DataError(f"cannot read {f.path}: {err.strerror}") from None


def _cached(path: Path, fingerprint: str, decode: Callable[[], dict]) -> dict:
    """`decode()`'s tensors, read from `path` if it was written for `fingerprint`, else decoded and stored there."""
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            log.warning("ignoring the unreadable cache %s (%s); decoding the PNGs again", path, err)
        else:
            if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint:
                log.debug("read %s", path)
                return stored
            log.info("the frames changed since %s was written; decoding the PNGs again", path)
    stored = {**decode(), "fingerprint": fingerprint}
    _save_atomically(stored, path)
    return stored


def _save_atomically(stored: dict, path: Path) -> None:
    """torch.save to a temporary file renamed over `path`, so a reader never sees half a cache; skipped if read-only."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique, so concurrent writers don't clash
    try:
        path.parent.mkdir(exist_ok=True)
        out = open(temporary, "xb")
    except OSError as err:
        log.warning("cannot write the frame cache %s (%s); the PNGs will be decoded again next time", path, err)
        return
    try:
        with out:
            torch.save(stored, out)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    log.info("cached the decoded frames in %s", path)


def _decode(paths: list[Path], frame_H: int, frame_W: int, split: str) -> torch.Tensor:
    """Every PNG of `paths` as RGB, resized to frame_H x frame_W."""
    _check_fits_in_memory(len(paths), frame_H, frame_W, split)
    frames = torch.empty((len(paths), 3, frame_H, frame_W), dtype=torch.uint8)  # (N, 3, H, W) uint8
    read = partial(_read_png, frame_H=frame_H, frame_W=frame_W)
    pool = ThreadPoolExecutor(DECODE_THREADS)
    try:
        decoded = pool.map(read, paths)
        for i, pixels in enumerate(tqdm(decoded, total=len(paths), desc=f"decoding {split} frames", unit="png")):
            frames[i] = torch.from_numpy(pixels).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    finally:
        pool.shutdown(cancel_futures=True)  # after a bad file, don't decode the rest only to throw it away
    return frames


def _check_fits_in_memory(frames: int, frame_H: int, frame_W: int, split: str) -> None:
    """A DataError, before allocating, when the decoded frames would not fit in the memory available."""
    needed = frames * 3 * frame_H * frame_W  # bytes of (N, 3, H, W) uint8
    available = _available_memory()
    if needed > available:
        raise DataError(f"the {split} split's {frames} images and pose maps at {frame_H}x{frame_W} need "
                        f"{needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of memory available; "
                        f"pass a smaller --frame_H/--frame_W")


def _available_memory() -> int:
    """Bytes of memory a new allocation can get: MemAvailable on Linux, else all physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_png(path: Path, frame_H: int, frame_W: int) -> np.ndarray:
    """One PNG as an (H, W, 3) uint8 array; an unreadable file, or one of no colour or gray mode, is a DataError naming it.

    PIL's convert("RGB") clips a 16-bit gray value to 255, so those frames are cut to their high byte
    first, as PIL does with 16-bit colour PNGs. Palette, gray, gray+alpha and RGBA convert as they are
    (alpha dropped).
    """
    try:
        with Image.open(path) as image:
            if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
                image = Image.fromarray((np.asarray(image).clip(0, 65535) >> 8).astype(np.uint8))  # (H, W) gray
            elif image.mode in ("I", "F"):
                kind = "floats" if image.mode == "F" else "32-bit integers"
                raise DataError(f"cannot read {path}: its pixels are {kind} (PIL mode {image.mode}); "
                                f"save the frames as 8-bit RGB PNGs")
            image = image.convert("RGB")
            if image.size != (frame_W, frame_H):
                # BILINEAR shrinks with a widened kernel in PIL, so downscaling is anti-aliased (torchvision's Resize).
                image = image.resize((frame_W, frame_H), Image.BILINEAR)
            return np.array(image)  # (H, W, 3) uint8, a writable copy for torch.from_numpy
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
