import pytest
import torch

from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.model import VideoCVAE
from cvae.train import build_model, validate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@pytest.mark.parametrize("bf16", [False, True])
def test_graphed_rollout_draws_the_same_frames_as_the_eager_one(bf16):
    cfg = TrainConfig(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16)
    model = VideoCVAE(cfg).cuda().eval()
    torch.nn.init.normal_(model.Generator.head.weight, std=0.1)  # untrained, the head is zero and ignores z
    first, poses = torch.rand(1, 3, 32, 64, device="cuda"), torch.rand(1, 50, 3, 32, 64, device="cuda")
    videos = []
    for cuda_graph in (False, True):
        generator = torch.Generator("cuda").manual_seed(5)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            videos.append(model.rollout(first, poses, generator, cuda_graph=cuda_graph))
    eager, graphed = videos
    assert torch.allclose(eager, graphed, atol=1e-5)
    assert not torch.allclose(eager[:, 1], eager[:, 2])  # the frames move: the comparison means something


def test_validation_with_cuda_graphs_scores_what_the_eager_rollout_scores(small_dataset):
    # the trainer's own path: channels_last, bf16 where the GPU has it, the validation video from disk
    cfg = TrainConfig(DR=str(small_dataset), F_dim=16, L_dim=8, N_dim=2, D_out_dim=16, val_vi_len=40, device="cuda")
    data = load_video_data(cfg)
    model = build_model(cfg, torch.device("cuda"))
    torch.nn.init.normal_(model.Generator.head.weight, std=0.1)
    images, labels = data.val_images.cuda(), data.val_labels.cuda()
    eager = validate(model, images, labels, cfg, seed=2).psnr
    graphed = validate(model, images, labels, cfg.replace(cuda_graphs=True), seed=2).psnr
    assert eager.shape == (39,)
    assert eager == pytest.approx(graphed, abs=1e-4)
