import pytest
import torch

from cvae.config import TrainConfig
from cvae.config import FRAME_OUTPUTS, MODEL_NAMES
from cvae.light_model import Decoder_Fusion, Gaussian_Predictor, Generator, Label_Encoder, RGB_Encoder
from cvae.model import MODELS, VideoCVAE, parameter_count, warp


def test_module_shapes_at_frame_resolution():
    frames = torch.rand(2, 3, 32, 64)
    assert RGB_Encoder(3, 128)(frames).shape == (2, 128, 32, 64)
    assert Label_Encoder(3, 32)(frames).shape == (2, 32, 32, 64)
    z, mu, logvar = Gaussian_Predictor(160, 12)(torch.rand(2, 128, 32, 64), torch.rand(2, 32, 32, 64),
                                                torch.randn(2, 12, 32, 64))
    assert z.shape == mu.shape == logvar.shape == (2, 12, 32, 64)
    fused = Decoder_Fusion(172, 192)(torch.rand(2, 128, 32, 64), torch.rand(2, 32, 32, 64), torch.rand(2, 12, 32, 64))
    assert fused.shape == (2, 192, 32, 64)
    assert Generator(192, 3)(torch.rand(2, 192, 32, 64)).shape == (2, 3, 32, 64)


def test_every_model_name_of_the_config_is_in_the_registry():
    assert set(MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("frame_output", FRAME_OUTPUTS)
def test_each_model_steps_to_frames_in_the_unit_range(name, frame_output):
    model = VideoCVAE(TrainConfig(model=name, frame_output=frame_output, F_dim=16, L_dim=8, N_dim=4,
                                  D_out_dim=16)).eval()
    frames = model.step(torch.rand(2, 3, 8, 16), model.label_transformation(torch.rand(2, 3, 8, 16)),
                        torch.randn(2, 4, 8, 16))
    assert frames.shape == (2, 3, 8, 16)
    assert frames.min() >= 0 and frames.max() <= 1


def test_default_model_size():
    assert 100_000 < parameter_count(VideoCVAE(TrainConfig())) < 1_000_000


def test_reparameterisation_statistics_and_gradients():
    predictor = Gaussian_Predictor(8, 2)
    mu = torch.full((4000, 2, 1, 1), 1.5, requires_grad=True)
    logvar = torch.full((4000, 2, 1, 1), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    predictor.body = _Fixed(mu, logvar)  # isolate the sampling from the network
    eps = torch.randn((4000, 2, 1, 1), generator=torch.Generator().manual_seed(0))
    z, _, _ = predictor(torch.zeros(4000, 4, 1, 1), torch.zeros(4000, 4, 1, 1), eps)
    assert abs(z.mean().item() - 1.5) < 0.03
    assert abs(z.std().item() - 0.5) < 0.02
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


class _Fixed(torch.nn.Module):
    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar = mu, logvar

    def forward(self, _):
        return torch.cat([self.mu, self.logvar], dim=1)


def test_rollout_feeds_back_and_is_seeded():
    cfg = TrainConfig(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16)
    model = VideoCVAE(cfg).eval()
    torch.nn.init.normal_(model.Generator.head.weight, std=0.1)  # untrained, the head is zero and ignores z
    first, poses = torch.rand(2, 3, 8, 16), torch.rand(2, 5, 3, 8, 16)
    video = model.rollout(first, poses, torch.Generator().manual_seed(3))
    assert video.shape == (2, 5, 3, 8, 16)
    assert torch.equal(video[:, 0], first)
    again = model.rollout(first, poses, torch.Generator().manual_seed(3))
    other = model.rollout(first, poses, torch.Generator().manual_seed(4))
    assert torch.equal(video, again)
    assert not torch.equal(video, other)


def test_untrained_light_model_with_residual_output_copies_the_previous_frame():
    model = VideoCVAE(TrainConfig(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16, frame_output="residual")).eval()
    prev_frame = torch.rand(2, 3, 8, 16) * 0.9 + 0.05
    step = model.step(prev_frame, torch.rand(2, 8, 8, 16), torch.randn(2, 2, 8, 16))
    assert torch.allclose(step, prev_frame, atol=1e-5)


def test_warp_moves_a_frame_by_whole_pixels_and_a_zero_flow_copies_it():
    frame = torch.rand(2, 3, 8, 16)
    assert torch.equal(warp(frame, torch.zeros(2, 2, 8, 16)), frame)
    flow = torch.zeros(2, 2, 8, 16)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # each output pixel reads 2 to the right and 1 up
    moved = warp(frame, flow)
    assert torch.allclose(moved[:, :, 1:, :-2], frame[:, :, :-1, 2:], atol=1e-6)
    assert torch.allclose(moved[:, :, 0, :-2], frame[:, :, 0, 2:], atol=1e-6)  # above the frame: its border


def test_a_cuda_graph_rollout_of_cpu_tensors_is_refused():
    model = VideoCVAE(TrainConfig(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16)).eval()
    with pytest.raises(ValueError, match="cuda_graph needs CUDA tensors, got them on cpu"):
        model.rollout(torch.rand(1, 3, 8, 16), torch.rand(1, 3, 3, 8, 16), cuda_graph=True)


def test_the_lab_model_has_the_lab_starters_parameter_count():
    # the lab's Generator draws the whole frame (frame_output: sigmoid); a mask is one more output channel
    assert parameter_count(VideoCVAE(TrainConfig(model="lab", frame_output="sigmoid"))) == 1_585_620
    assert parameter_count(VideoCVAE(TrainConfig(model="lab", frame_output="mask"))) == 1_585_620 + 25


@pytest.mark.parametrize("frame_output", FRAME_OUTPUTS)
def test_each_frame_output_steps_under_bf16_autocast(frame_output):
    # autocast computes the Generator in bf16 while the previous frame stays fp32
    model = VideoCVAE(TrainConfig(frame_output=frame_output, F_dim=16, L_dim=8, N_dim=2, D_out_dim=16)).eval()
    prev_frame = torch.rand(1, 3, 8, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        frame = model.step(prev_frame, model.label_transformation(torch.rand(1, 3, 8, 16)), torch.randn(1, 2, 8, 16))
    assert frame.shape == (1, 3, 8, 16) and torch.isfinite(frame.float()).all()
