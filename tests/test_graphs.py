import pytest
import torch

from cvae.config import TrainConfig
from cvae.model import VideoCVAE

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
