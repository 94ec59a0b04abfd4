import torch
from torch import nn

from cvae.lab_model import (IDENTITY_SLOPE, Decoder_Fusion, Gaussian_Predictor, Generator, Label_Encoder,
                            RGB_Encoder)

# default dims: F_dim=128, L_dim=32, N_dim=12, D_out_dim=192
FIVE_MODULES = {
    "RGB_Encoder": lambda: RGB_Encoder(3, 128),
    "Label_Encoder": lambda: Label_Encoder(3, 32),
    "Gaussian_Predictor": lambda: Gaussian_Predictor(160, 12),
    "Decoder_Fusion": lambda: Decoder_Fusion(172, 192),
    "Generator": lambda: Generator(192, 3),
}
# counted on the lab starter's own modules.py/layers.py at the same dims
LAB_PARAMETERS = {"RGB_Encoder": 193_568, "Label_Encoder": 16_832, "Gaussian_Predictor": 8_289,
                  "Decoder_Fusion": 617_768, "Generator": 749_163}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_module_shapes_at_frame_resolution():
    frames = torch.rand(1, 3, 32, 64)
    frame_feat, pose_feat = torch.rand(1, 128, 32, 64), torch.rand(1, 32, 32, 64)
    assert RGB_Encoder(3, 128)(frames).shape == (1, 128, 32, 64)
    assert Label_Encoder(3, 32)(frames).shape == (1, 32, 32, 64)
    z, mu, logvar = Gaussian_Predictor(160, 12)(frame_feat, pose_feat, torch.randn(1, 12, 32, 64))
    assert z.shape == mu.shape == logvar.shape == (1, 12, 32, 64)
    assert Decoder_Fusion(172, 192)(frame_feat, pose_feat, z).shape == (1, 192, 32, 64)
    assert Generator(192, 3)(torch.rand(1, 192, 32, 64)).shape == (1, 3, 32, 64)


def test_parameter_count_is_the_labs():
    counts = {name: count(build()) for name, build in FIVE_MODULES.items()}
    assert counts == LAB_PARAMETERS
    assert sum(counts.values()) == 1_585_620


def test_generator_draws_output_nc_channels():
    assert Generator(16, 4)(torch.rand(1, 16, 4, 8)).shape == (1, 4, 4, 8)


def test_z_is_the_reparameterised_noise():
    predictor = Gaussian_Predictor(16, 4)
    frame_feat, pose_feat, eps = torch.rand(1, 8, 4, 8), torch.rand(1, 8, 4, 8), torch.randn(1, 4, 4, 8)
    z, mu, logvar = predictor(frame_feat, pose_feat, eps)
    torch.testing.assert_close(z, mu + eps * torch.exp(0.5 * logvar))
    z_again, _, _ = predictor(frame_feat, pose_feat, eps)
    assert torch.equal(z, z_again)  # no noise of its own


def test_labs_leaky_relu_true_layers_are_identities():
    assert IDENTITY_SLOPE == True  # noqa: E712 - the lab's nn.LeakyReLU(True) is this slope
    identities = [layer for build in (FIVE_MODULES["Label_Encoder"], FIVE_MODULES["Gaussian_Predictor"])
                  for layer in build() if isinstance(layer, nn.LeakyReLU)]
    assert len(identities) == 2  # one in Label_Encoder, one in Gaussian_Predictor
    values = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    for layer in identities:
        assert torch.equal(layer(values), values)
    assert torch.equal(nn.LeakyReLU(True)(values), values)  # what the lab wrote does the same


def test_generator_output_is_unbounded():
    generator = Generator(16, 3)
    last = generator[-1]
    assert isinstance(last, nn.Conv2d)  # no activation after the last conv
    with torch.no_grad():
        last.bias.copy_(torch.tensor([-5.0, 0.0, 5.0]))
        last.weight.zero_()
    raw = generator(torch.rand(1, 16, 4, 8))  # (1, 3, 4, 8)
    assert raw.min() == -5.0 and raw.max() == 5.0
