import torch

from cvae.augment import augment_clips


def test_each_clip_gets_one_channel_order_for_all_frames_and_poses_keep_their_colours():
    images = torch.arange(6 * 5 * 3 * 2 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(6, 5, 3, 2, 4)
    labels = images.flip(2).clone()
    augmented, poses = augment_clips(images, labels, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    orders, motions = set(), set()
    for clip in range(6):
        # pose maps: mirrored in x (dim -1) and/or played backwards (dim 0), never recoloured
        motion = next(dims for dims in ((), (-1,), (0,), (-1, 0)) if torch.equal(poses[clip].flip(dims), labels[clip]))
        undone = augmented[clip].flip(motion)  # (T, 3, H, W): the frames moved as their poses were
        order = [next(c for c in range(3) if torch.equal(undone[:, k], images[clip, :, c])) for k in range(3)]
        assert sorted(order) == [0, 1, 2]
        orders.add(tuple(order))
        motions.add(motion)
    assert len(orders) > 1 and len(motions) > 1  # clips are drawn apart


def test_the_same_generator_state_gives_the_same_augmentation():
    images = torch.randint(0, 256, (4, 3, 3, 2, 4), dtype=torch.uint8)
    first = augment_clips(images, images, torch.Generator().manual_seed(5))
    again = augment_clips(images, images, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
