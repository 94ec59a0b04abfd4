"""Procedural dance videos in the lab's LAB4_Dataset layout: a stick-figure dancer, its pose maps and RGB frames."""
from __future__ import annotations

import argparse
import colorsys
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from cvae.errors import CVAEError, DataError

log = logging.getLogger(__name__)

CLIP_LEN = 16  # the lab's train_vi_len: a training video of a multiple of it never splits a clip across two videos
SUPERSAMPLE = 2  # RGB frames are drawn this many times larger, then shrunk with LANCZOS, for smooth edges
PNG_COMPRESS_LEVEL = 1  # fast to write; the files are small anyway
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # mixed into the seed so no two splits share a dancer

# Skeleton segments of the pose map, each with a fixed colour; "l" and "r" are the sides of the screen.
LIMB_COLOURS: dict[str, tuple[int, int, int]] = {
    "torso": (255, 85, 0),
    "shoulders": (255, 170, 0),
    "hips": (170, 255, 0),
    "l_thigh": (0, 170, 255),
    "l_shin": (0, 85, 255),
    "r_thigh": (85, 0, 255),
    "r_shin": (255, 0, 255),
    "l_upper_arm": (85, 255, 0),
    "l_forearm": (0, 255, 0),
    "r_upper_arm": (0, 255, 170),
    "r_forearm": (0, 255, 255),
    "head": (255, 0, 0),
}
LIMB_JOINTS: dict[str, tuple[str, str]] = {
    "torso": ("neck", "pelvis"),
    "shoulders": ("l_shoulder", "r_shoulder"),
    "hips": ("l_hip", "r_hip"),
    "l_thigh": ("l_hip", "l_knee"),
    "l_shin": ("l_knee", "l_ankle"),
    "r_thigh": ("r_hip", "r_knee"),
    "r_shin": ("r_knee", "r_ankle"),
    "l_upper_arm": ("l_shoulder", "l_elbow"),
    "l_forearm": ("l_elbow", "l_wrist"),
    "r_upper_arm": ("r_shoulder", "r_elbow"),
    "r_forearm": ("r_elbow", "r_wrist"),
    "head": ("neck", "head"),
}

# Body proportions in units of the dancer's scale (about its standing height).
TORSO, NECK, HEAD_RADIUS = 0.30, 0.10, 0.075
SHOULDER_HALF, HIP_HALF = 0.09, 0.055
UPPER_ARM, FOREARM, THIGH, SHIN = 0.17, 0.16, 0.22, 0.22
ARM_WIDTH, LEG_WIDTH, NECK_WIDTH = 0.055, 0.075, 0.045
FOOT_DROP = 0.03  # ankle joint to sole: the sole, not the ankle, touches the floor

# The joint angles that dance, in degrees: (lowest mean, highest mean, lower bound, upper bound).
# Shoulder and hip angles open the limb away from the body; elbow and knee angles bend it.
ANGLES: dict[str, tuple[float, float, float, float]] = {
    "lean": (-3, 3, -10, 10),
    "head": (-5, 5, -18, 18),
    "l_shoulder": (20, 80, -10, 170),
    "l_elbow": (20, 60, 0, 140),
    "r_shoulder": (20, 80, -10, 170),
    "r_elbow": (20, 60, 0, 140),
    "l_hip": (5, 15, 0, 40),
    "l_knee": (5, 20, 0, 55),
    "r_hip": (5, 15, 0, 40),
    "r_knee": (5, 20, 0, 55),
}
HARMONICS = (0.5, 1.0, 2.0)  # multiples of the dancer's tempo that each angle oscillates at
MAX_SHIFT = 0.2  # the pelvis wanders at most this fraction of the width from the centre

SKIN_TONES = ((255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 51, 23))
HAIR_COLOURS = ((20, 20, 20), (60, 40, 20), (120, 80, 40), (200, 170, 90), (150, 50, 30), (90, 90, 90))

Colour = tuple[int, int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class Sizes:
    """How many videos and frames to write, and the PNG size."""

    train_videos: int = 12
    train_frames: int = 320
    val_frames: int = 630
    test_seqs: int = 5
    test_frames: int = 630
    height: int = 64
    width: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name}={getattr(self, f.name)}: must be >= 1")
        if self.train_frames % CLIP_LEN:
            raise ValueError(f"train_frames={self.train_frames}: must be a multiple of {CLIP_LEN} "
                             "so no training clip spans two videos")
        if min(self.height, self.width) < 16:
            raise ValueError(f"height={self.height}, width={self.width}: both must be >= 16 pixels")


SMALL = Sizes(train_videos=2, train_frames=48, val_frames=40, test_seqs=2, test_frames=40)


@dataclass(frozen=True)
class Appearance:
    """What one video looks like: scene and clothes colours, limb thickness."""

    wall: Colour
    floor: Colour
    horizon: float  # fraction of the height where the floor starts
    skin: Colour
    hair: Colour
    shirt: Colour
    trousers: Colour
    shoes: Colour
    thickness: float  # multiplies the limb widths


@dataclass(frozen=True, eq=False)
class Motion:
    """How one dancer moves: each angle a sum of sinusoids around its mean, plus sway, hops and drift."""

    mean: np.ndarray  # (A,) degrees, one per entry of ANGLES
    amplitude: np.ndarray  # (A, K) degrees, K = len(HARMONICS)
    frequency: np.ndarray  # (A, K) cycles per frame
    phase: np.ndarray  # (A, K) radians
    tempo: float  # cycles per frame of the beat
    sway: float  # fraction of the width
    hop: float  # fraction of the scale
    drift: float  # fraction of the width
    drift_frequency: float  # cycles per frame
    drift_phase: float  # radians
    floor: float  # fraction of the height where the soles touch the floor


@dataclass(frozen=True, eq=False)
class Dancer:
    """One video's figure: its size, its look and its moves."""

    scale: float  # standing height as a fraction of the frame height
    appearance: Appearance
    motion: Motion


@dataclass(frozen=True)
class Pose:
    """Joint positions in pixels of one frame, and the figure's scale in pixels."""

    joints: dict[str, Point]
    scale: float


def make_dancer(seed: int, split: str, index: int) -> Dancer:
    """The dancer of video `index` of `split`: a function of the three alone."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    return Dancer(scale=float(rng.uniform(0.70, 0.80)), appearance=_random_appearance(rng), motion=_random_motion(rng))


def _random_motion(rng: np.random.Generator) -> Motion:
    tempo = 1.0 / rng.uniform(20, 48)  # a beat every 20 to 48 frames: quick but still smooth frame to frame
    bounds = np.array(list(ANGLES.values()))  # (A, 4)
    mean = rng.uniform(bounds[:, 0], bounds[:, 1])  # (A,)
    # The harmonics' weights sum to one, so an angle never leaves [lower bound, upper bound].
    reach = rng.uniform(0.4, 1.0, len(ANGLES)) * np.minimum(mean - bounds[:, 2], bounds[:, 3] - mean)  # (A,)
    weights = rng.dirichlet(np.ones(len(HARMONICS)), len(ANGLES))  # (A, K)
    sway = rng.uniform(0.0, 0.05)
    return Motion(
        mean=mean,
        amplitude=reach[:, None] * weights,
        frequency=tempo * np.broadcast_to(np.array(HARMONICS), weights.shape),
        phase=rng.uniform(0, 2 * np.pi, weights.shape),
        tempo=tempo,
        sway=sway,
        hop=rng.uniform(0.0, 0.06),
        drift=rng.uniform(0.03, MAX_SHIFT - sway),
        drift_frequency=1.0 / rng.uniform(150, 400),
        drift_phase=rng.uniform(0, 2 * np.pi),
        floor=rng.uniform(0.86, 0.93),
    )


def _random_appearance(rng: np.random.Generator) -> Appearance:
    wall = _hsv(rng, saturation=(0.1, 0.5), value=(0.35, 0.9))
    floor = _distinct(rng, [wall], 60, saturation=(0.1, 0.6), value=(0.2, 0.7))
    shirt = _distinct(rng, [wall, floor], 80, saturation=(0.4, 1.0), value=(0.3, 1.0))
    trousers = _distinct(rng, [wall, floor, shirt], 70, saturation=(0.3, 1.0), value=(0.2, 0.9))
    skin = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in SKIN_TONES[rng.integers(len(SKIN_TONES))])
    return Appearance(
        wall=wall,
        floor=floor,
        horizon=float(rng.uniform(0.55, 0.75)),
        skin=skin,
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
        shirt=shirt,
        trousers=trousers,
        shoes=_hsv(rng, saturation=(0.0, 0.6), value=(0.05, 0.3)),
        thickness=float(rng.uniform(0.85, 1.25)),
    )


def _hsv(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> Colour:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(int(round(255 * c)) for c in rgb)


def _distinct(rng: np.random.Generator, others: list[Colour], min_distance: float, **hsv_ranges) -> Colour:
    """A random colour at least `min_distance` (RGB, Euclidean) from each of `others`, so clothes stand out."""
    while True:
        colour = _hsv(rng, **hsv_ranges)
        if all(math.dist(colour, other) >= min_distance for other in others):
            return colour


def pose_at(dancer: Dancer, t: int, height: int, width: int) -> Pose:
    """The dancer's joints at frame `t` in a `height` x `width` frame."""
    motion = dancer.motion
    waves = motion.amplitude * np.sin(2 * np.pi * motion.frequency * t + motion.phase)  # (A, K)
    angle = dict(zip(ANGLES, np.radians(motion.mean + waves.sum(axis=1))))
    scale = dancer.scale * height

    # Joints relative to the pelvis; an angle of 0 points straight down, pi/2 to the right of the screen.
    def step(start: Point, direction: float, length: float) -> Point:
        return start[0] + scale * length * math.sin(direction), start[1] + scale * length * math.cos(direction)

    up = math.pi + angle["lean"]
    joints: dict[str, Point] = {"pelvis": (0.0, 0.0)}
    joints["neck"] = step(joints["pelvis"], up, TORSO)
    joints["head"] = step(joints["neck"], up + angle["head"], NECK + HEAD_RADIUS)
    for side, sign in (("l", -1), ("r", 1)):
        # Mirrored so a positive shoulder or hip angle opens either limb outwards.
        shoulder = step(joints["neck"], up - sign * math.pi / 2, SHOULDER_HALF)
        upper_arm = angle["lean"] + sign * angle[f"{side}_shoulder"]
        elbow = step(shoulder, upper_arm, UPPER_ARM)
        wrist = step(elbow, upper_arm + sign * angle[f"{side}_elbow"], FOREARM)  # bends towards the head
        hip = step(joints["pelvis"], up - sign * math.pi / 2, HIP_HALF)
        thigh = sign * angle[f"{side}_hip"]
        knee = step(hip, thigh, THIGH)
        ankle = step(knee, thigh - sign * angle[f"{side}_knee"], SHIN)  # knees out, feet under: a plie
        joints.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                       f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle})

    # Stand on the floor (bent knees lower the body), hop on the beat, sway and drift sideways.
    beat = 2 * np.pi * motion.tempo * t
    hop = scale * motion.hop * max(0.0, math.sin(beat)) ** 2
    lowest = max(joints["l_ankle"][1], joints["r_ankle"][1]) + FOOT_DROP * scale
    x = width * (0.5 + motion.sway * math.sin(beat / 2)
                 + motion.drift * math.sin(2 * np.pi * motion.drift_frequency * t + motion.drift_phase))
    y = height * motion.floor - lowest - hop
    return Pose(joints={name: (x + px, y + py) for name, (px, py) in joints.items()}, scale=scale)


def draw_label(pose: Pose, height: int, width: int) -> Image.Image:
    """The pose map: each limb a line of its LIMB_COLOURS colour on black, without anti-aliasing."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    line_width = max(1, round(height / 32))
    for limb, (start, end) in LIMB_JOINTS.items():
        draw.line([pose.joints[start], pose.joints[end]], fill=LIMB_COLOURS[limb], width=line_width)
    head_x, head_y = pose.joints["head"]
    radius = HEAD_RADIUS * pose.scale
    draw.ellipse([head_x - radius, head_y - radius, head_x + radius, head_y + radius],
                 outline=LIMB_COLOURS["head"], width=line_width)
    return image


def draw_frame(pose: Pose, look: Appearance, height: int, width: int) -> Image.Image:
    """The RGB frame: the clothed figure in `pose` in front of a wall and floor, anti-aliased."""
    zoom = SUPERSAMPLE
    image = Image.new("RGB", (width * zoom, height * zoom), look.wall)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, look.horizon * height * zoom, width * zoom, height * zoom], fill=look.floor)
    p = {name: (x * zoom, y * zoom) for name, (x, y) in pose.joints.items()}
    unit = pose.scale * zoom
    arm, leg = ARM_WIDTH * look.thickness * unit, LEG_WIDTH * look.thickness * unit

    for side in "lr":
        _segment(draw, p[f"{side}_hip"], p[f"{side}_knee"], leg, look.trousers)
        _segment(draw, p[f"{side}_knee"], p[f"{side}_ankle"], leg * 0.9, look.trousers)
        _disc(draw, (p[f"{side}_ankle"][0], p[f"{side}_ankle"][1] + FOOT_DROP * unit * 0.5), leg * 0.6, look.shoes)
    # The shirt overlaps the waistband so no wall shows between the two.
    _quad(draw, p["l_hip"], p["r_hip"], p["pelvis"], p["neck"], 0.25, leg / 2, look.trousers)
    _quad(draw, p["l_shoulder"], p["r_shoulder"], p["neck"], p["pelvis"], 0.9, arm / 2, look.shirt)
    _segment(draw, p["neck"], p["head"], NECK_WIDTH * look.thickness * unit, look.skin)
    for side in "lr":
        _segment(draw, p[f"{side}_shoulder"], p[f"{side}_elbow"], arm * 1.1, look.shirt)
        _segment(draw, p[f"{side}_elbow"], p[f"{side}_wrist"], arm * 0.85, look.skin)
        _disc(draw, p[f"{side}_wrist"], arm * 0.6, look.skin)
    _head(draw, p["head"], p["neck"], HEAD_RADIUS * unit, look)
    return image.resize((width, height), Image.LANCZOS)


def _segment(draw: ImageDraw.ImageDraw, start: Point, end: Point, width: float, colour: Colour) -> None:
    """A thick line with round ends: a limb."""
    draw.line([start, end], fill=colour, width=max(1, round(width)))
    for point in (start, end):
        _disc(draw, point, width / 2, colour)


def _disc(draw: ImageDraw.ImageDraw, centre: Point, radius: float, colour: Colour) -> None:
    draw.ellipse([centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], fill=colour)


def _quad(draw: ImageDraw.ImageDraw, left: Point, right: Point, base: Point, toward: Point,
          reach: float, widen: float, colour: Colour) -> None:
    """The quadrilateral from the `left`-`right` edge running `reach` of the way from `base` to `toward`."""
    offset = ((toward[0] - base[0]) * reach, (toward[1] - base[1]) * reach)
    across = (right[0] - left[0], right[1] - left[1])
    norm = math.hypot(*across) or 1.0
    out = (across[0] / norm * widen, across[1] / norm * widen)  # widened to cover the limbs' round ends
    near_left, near_right = (left[0] - out[0], left[1] - out[1]), (right[0] + out[0], right[1] + out[1])
    far_left = (near_left[0] + offset[0], near_left[1] + offset[1])
    far_right = (near_right[0] + offset[0], near_right[1] + offset[1])
    draw.polygon([near_left, near_right, far_right, far_left], fill=colour)


def _head(draw: ImageDraw.ImageDraw, centre: Point, neck: Point, radius: float, look: Appearance) -> None:
    """A skin-coloured head with hair on the crown, tilted with the neck."""
    _disc(draw, centre, radius, look.skin)
    tilt = math.degrees(math.atan2(centre[0] - neck[0], neck[1] - centre[1]))  # 0 when the head is upright
    box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
    draw.chord(box, start=190 + tilt, end=350 + tilt, fill=look.hair)


def generate(out_dir: str | Path, seed: int = 0, small: bool = False, **overrides: int) -> Path:
    """Write a data set to `out_dir` (which must not hold anything yet); `overrides` are Sizes fields."""
    out_dir = Path(out_dir)
    sizes = replace(SMALL if small else Sizes(), **overrides)
    if seed < 0:
        raise ValueError(f"seed={seed}: must be >= 0")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir} already exists and is not an empty folder; remove it or choose another")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end, so an interrupted run never leaves half a data set.
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    total = (sizes.train_videos * sizes.train_frames * 2 + sizes.val_frames * 2
             + sizes.test_seqs * (sizes.test_frames + 1))
    try:
        with tqdm(total=total, desc=f"synthetic data -> {out_dir}", unit="png") as bar:
            train = staging / "train"
            for video in range(sizes.train_videos):
                _write_video(make_dancer(seed, "train", video), sizes, sizes.train_frames,
                             train / "train_img", train / "train_label", video * sizes.train_frames, bar)
            _write_video(make_dancer(seed, "val", 0), sizes, sizes.val_frames,
                         staging / "val" / "val_img", staging / "val" / "val_label", 0, bar)
            for seq in range(sizes.test_seqs):
                # The lab's test split holds each sequence's first frame only; the rest is to be predicted.
                _write_video(make_dancer(seed, "test", seq), sizes, sizes.test_frames,
                             staging / "test" / "test_img" / f"seq{seq}", staging / "test" / "test_label" / f"seq{seq}",
                             0, bar, rgb_frames=1)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_video(dancer: Dancer, sizes: Sizes, n_frames: int, img_dir: Path, label_dir: Path,
                 first_number: int, bar: tqdm, rgb_frames: int | None = None) -> None:
    """Write frames first_number.. of one video: every pose map, and the first `rgb_frames` RGB frames (all if None)."""
    img_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for t in range(n_frames):
        pose = pose_at(dancer, t, sizes.height, sizes.width)
        name = f"frame{first_number + t}.png"
        draw_label(pose, sizes.height, sizes.width).save(label_dir / name, compress_level=PNG_COMPRESS_LEVEL)
        if rgb_frames is None or t < rgb_frames:
            draw_frame(pose, dancer.appearance, sizes.height, sizes.width).save(
                img_dir / name, compress_level=PNG_COMPRESS_LEVEL)
            bar.update(1)
        bar.update(1)


def ensure_dataset(root: str | Path, seed: int = 0, small: bool = False) -> Path:
    """Generate the default data set at `root` unless `root` already exists; return `root`."""
    root = Path(root)
    if root.exists():
        log.debug("using the data set at %s", root)
        return root
    log.info("data root %s does not exist; generating a synthetic dance data set there (seed %d)", root, seed)
    start = time.perf_counter()
    generate(root, seed=seed, small=small)
    log.info("wrote the synthetic data set to %s in %.1f s", root, time.perf_counter() - start)
    return root


def save_sample_grid(root: str | Path, path: str | Path, frames_per_video: int = Sizes.train_frames,
                     videos: int = 2, columns: int = 6, stride: int = 4, zoom: int = 3) -> Path:
    """Save a PNG of training frames: per video, a row of pose maps above the matching RGB frames, enlarged."""
    train = Path(root) / "train"
    rows = []
    for video in range(videos):
        numbers = [video * frames_per_video + column * stride for column in range(columns)]
        for folder in (train / "train_label", train / "train_img"):
            missing = [folder / f"frame{n}.png" for n in numbers if not (folder / f"frame{n}.png").is_file()]
            if missing:
                raise DataError(f"{missing[0]} does not exist; is frames_per_video={frames_per_video} right?")
            rows.append(np.concatenate([np.asarray(Image.open(folder / f"frame{n}.png").convert("RGB"))
                                        for n in numbers], axis=1))  # (H, columns * W, 3)
    grid = Image.fromarray(np.concatenate(rows, axis=0))  # (2 * videos * H, columns * W, 3)
    grid = grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvae.synthetic", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a tiny data set for tests: "
                        f"{SMALL.train_videos}x{SMALL.train_frames} training frames, {SMALL.val_frames} validation, "
                        f"{SMALL.test_seqs}x{SMALL.test_frames} test")
    for f in fields(Sizes):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=int, default=None,
                            help=f"default {f.default} ({getattr(SMALL, f.name)} with --small)")
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(Sizes) if getattr(args, f.name) is not None}
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be >= 0")
    try:
        sizes = replace(SMALL if args.small else Sizes(), **overrides)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    try:
        out_dir = generate(args.out_dir, seed=args.seed, **asdict(sizes))
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out_dir} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
