import copy
import math

import numpy as np
import pytest
import torch

from cvae import checkpoint
from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.errors import CheckpointError, TrainingDiverged
from cvae.model import VideoCVAE
from cvae.train import (EpochReport, compile_fallback, compile_modules, fit, kl_term, native_bf16, validate,
                        validate_one_step)

TINY = dict(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16, train_vi_len=4, val_vi_len=8, batch_size=4,
            kl_anneal_cycle=2, tfr=0.5, tfr_sde=0, tfr_d_step=0.1, per_save=1, seed=3,
            channels_last=False)  # NCHW: at these sizes on the CPU, the norm layers are slow in channels_last


@pytest.fixture
def tiny(small_dataset, tmp_path):
    def make(**changes):
        return TrainConfig(**{"DR": str(small_dataset), "save_root": str(tmp_path / "run"), **TINY, **changes})
    return make


def test_an_epoch_report_is_stored_as_plain_values_and_read_back_by_name():
    report = EpochReport(epoch=2, train_loss=1.0, train_recon=0.5, train_kl=0.25, kl_beta=1.0, tfr=0.5, lr=1e-3,
                         val_psnr=21.0, val_psnr_per_frame=np.array([22.0, 20.0]), epoch_seconds=3.0, val_psnr_1step=30.0)
    state = report.to_state()
    assert state["val_psnr_per_frame"] == [22.0, 20.0]
    again = EpochReport.from_state(state)
    assert again.val_psnr_per_frame.tolist() == [22.0, 20.0] and again.val_psnr_1step == 30.0
    # written before val_psnr_1step and SSIM existed: their defaults; a field of newer code: left out
    older = EpochReport.from_state({key: value for key, value in state.items()
                                    if key not in ("val_psnr_1step", "val_ssim", "val_ssim_per_frame")})
    assert math.isnan(older.val_psnr_1step) and math.isnan(older.val_ssim) and older.val_ssim_per_frame.shape == (0,)
    assert EpochReport.from_state({**state, "val_fid": 3.0}).val_psnr == 21.0


def weights(path):
    return checkpoint.load(path)["model"]


def test_resume_continues_exactly(tiny, tmp_path):
    straight = tiny(num_epoch=4, save_root=str(tmp_path / "straight"))
    data = load_video_data(straight)
    history = fit(straight, data, progress=False)

    interrupted = straight.replace(save_root=str(tmp_path / "interrupted"))
    fit(interrupted, data, callbacks=[lambda report: report.epoch == 1], progress=False)
    resumed = fit(interrupted, data, resume_from=tmp_path / "interrupted/checkpoints/epoch_0002.ckpt",
                  progress=False)

    final_straight = weights(history.last_checkpoint)
    final_resumed = weights(resumed.last_checkpoint)
    assert resumed.last_checkpoint.name == "epoch_0004.ckpt"
    assert all(torch.equal(final_straight[name], final_resumed[name]) for name in final_straight)
    assert [r.train_loss for r in resumed.epochs] == [r.train_loss for r in history.epochs]
    assert [r.val_psnr for r in resumed.epochs] == [r.val_psnr for r in history.epochs]


def test_tiny_model_overfits_tiny_data(tiny):
    # a long Monotonic ramp stopped after 60 epochs keeps beta <= 0.03: the KL term cannot drown the recon
    # memorising is the point here, so no augmentation; the residual output starts as an exact copy
    cfg = tiny(num_epoch=2000, partial=0.1, batch_size=2, tfr=1.0, tfr_d_step=0.0, kl_anneal_type="Monotonic",
               kl_anneal_ratio=1.0, lr=0.003, lr_schedule="constant", per_save=1000, augment=False,
               frame_output="residual", norm="batch")
    data = load_video_data(cfg)
    history = fit(cfg, data, callbacks=[lambda report: report.epoch == 59], progress=False)
    clips = data.train_images.float() / 255  # (2, T, 3, H, W)
    copy_previous_mse = (clips[:, 1:] - clips[:, :-1]).pow(2).mean().item()
    recon = [report.train_recon for report in history.epochs]
    # the untrained model copies the previous frame (the posterior starts at the prior, so the KL
    # starts at 0 too): beating copying by a quarter means it learnt the motion
    assert recon[0] == pytest.approx(copy_previous_mse, rel=0.2)
    assert recon[-1] < 0.75 * copy_previous_mse, (recon, copy_previous_mse)


def test_validation_uses_running_statistics_and_restores_train_mode(tiny):
    cfg = tiny(norm="batch")
    data = load_video_data(cfg)
    model = VideoCVAE(cfg).train()
    batch_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = batch_norm.running_mean.clone()
    first = validate(model, data.val_images, data.val_labels, cfg, seed=1)
    assert model.training
    assert torch.equal(batch_norm.running_mean, running_mean)
    second = validate(model, data.val_images, data.val_labels, cfg, seed=1)
    assert first.psnr.shape == first.ssim.shape == (cfg.val_vi_len - 1,)
    assert (first.psnr == second.psnr).all() and (first.ssim == second.ssim).all()


def test_validation_does_not_see_future_frames(tiny):
    cfg = tiny()
    data = load_video_data(cfg)
    model = VideoCVAE(cfg)
    scores = validate(model, data.val_images, data.val_labels, cfg, seed=1)
    scrambled = data.val_images.clone()
    scrambled[2:] = data.val_images[1]  # frames 2.. replaced: a posterior-based rollout would change frame 1
    rescored = validate(model, scrambled, data.val_labels, cfg, seed=1)
    assert rescored.psnr[0] == scores.psnr[0] and rescored.ssim[0] == scores.ssim[0]


def test_callback_gets_every_figure_and_can_stop(tiny):
    cfg = tiny(num_epoch=5)
    seen = []
    history = fit(cfg, load_video_data(cfg), callbacks=[lambda report: seen.append(report) or len(seen) == 2],
                  progress=False)
    assert [report.epoch for report in seen] == [0, 1]
    assert history.stopped_early
    report = seen[0]
    assert report.kl_beta == 0.4 and report.tfr == 0.5 and report.lr == cfg.lr
    assert math.isclose(report.train_loss, report.train_recon + report.kl_beta * report.train_kl, rel_tol=1e-5)
    assert report.val_psnr == pytest.approx(report.val_psnr_per_frame.mean())
    assert report.val_ssim == pytest.approx(report.val_ssim_per_frame.mean()) and 0 < report.val_ssim < 1
    assert report.val_ssim_per_frame.shape == (cfg.val_vi_len - 1,)
    assert report.epoch_seconds > 0


def test_nan_loss_raises(tiny):
    # the lab model's Generator starts random, so the first step moves the posterior, whose logvar then explodes
    cfg = tiny(lr=1e30, lr_schedule="constant", grad_clip=1e30, num_epoch=3, kl_anneal_type="None", model="lab",
               N_dim=4, frame_output="sigmoid")
    with pytest.raises(TrainingDiverged, match="training loss became"):
        fit(cfg, load_video_data(cfg), progress=False)


def test_checkpoint_holds_everything_to_resume(tiny):
    cfg = tiny(num_epoch=1)
    history = fit(cfg, load_video_data(cfg), progress=False)
    state = checkpoint.load(history.last_checkpoint)
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "data_rng", "noise_rng", "config", "history"}
    assert checkpoint.config_of(state, history.last_checkpoint) == cfg
    assert state["optimizer"]["state"], "optimizer moments must be saved"
    assert state["precision"] == ("bf16" if native_bf16("cpu") else "fp32")  # what the run computed in


def test_corrupt_checkpoint_is_named_and_skipped(tiny, tmp_path):
    cfg = tiny(num_epoch=2)
    history = fit(cfg, load_video_data(cfg), progress=False)
    newest = history.last_checkpoint
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(newest)):
        checkpoint.load(newest)
    assert checkpoint.latest_good(newest.parent).name == "epoch_0001.ckpt"


def test_resume_with_another_model_shape_is_refused(tiny):
    cfg = tiny(num_epoch=1)
    history = fit(cfg, load_video_data(cfg), progress=False)
    wider = cfg.replace(F_dim=32)
    with pytest.raises(CheckpointError, match="another shape than"):
        fit(wider, load_video_data(wider), resume_from=history.last_checkpoint, progress=False)


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no bf16 units: cfg.bf16 leaves runs in fp32")
def test_bf16_autocast_validates_within_a_third_of_a_decibel_of_fp32(tiny):
    cfg = tiny(num_epoch=3, lr=0.003, partial=0.5)
    data = load_video_data(cfg)
    fp32 = fit(cfg.replace(bf16=False), data, progress=False)
    bf16 = fit(cfg.replace(bf16=True, save_root=cfg.save_root + "_bf16"), data, progress=False)
    assert [r.train_loss for r in bf16.epochs] != [r.train_loss for r in fp32.epochs]  # the option took effect
    # the same short training: bf16's rounding changes the path, not where it gets
    assert [abs(ours.val_psnr - reference.val_psnr) for ours, reference in zip(bf16.epochs, fp32.epochs)] == \
        pytest.approx([0.0] * cfg.num_epoch, abs=0.3)


@pytest.mark.slow
def test_compiled_modules_compute_what_eager_ones_do_and_keep_their_keys(tiny):
    # one teacher-forced clip, forward and backward: each module is one graph, compiled once (a free-running
    # clip recompiles for its other strides and requires_grad, tripling inductor's C++ builds on a cold cache);
    # a whole training run would compare chaos, as inductor's fused kernels round differently and a few
    # hundred steps amplify that (several % of the loss). Inductor's C++ kernels scalar, not vectorised: what is
    # checked here is ours (the modules compile, compute what eager ones do, keep their keys), and g++ builds the
    # scalar kernels in 36 s of CPU against 59 s
    from torch._inductor import config as inductor_config

    cfg = tiny(bf16=False)
    torch.manual_seed(0)
    eager = VideoCVAE(cfg)
    compiled = copy.deepcopy(eager)
    compile_modules(compiled)
    images = torch.rand(2, 4, 3, cfg.frame_H, cfg.frame_W, generator=torch.Generator().manual_seed(1))
    labels = torch.rand(2, 4, 3, cfg.frame_H, cfg.frame_W, generator=torch.Generator().manual_seed(2))
    losses = []
    with compile_fallback(cfg), inductor_config.patch({"cpp.vec_isa_ok": False}):
        for model in eager, compiled:
            recon, kl = model.clip_losses(images, labels, teacher_forced=True, generator=torch.Generator().manual_seed(3))
            (recon + kl).backward()
            losses.append((recon.item(), kl.item()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-9)
    for (name, ours), reference in zip(compiled.named_parameters(), eager.parameters()):
        assert torch.allclose(ours.grad, reference.grad, rtol=1e-3, atol=1e-7), name
    assert compiled.state_dict().keys() == eager.state_dict().keys()


FALLBACK_RUN = """
import json, sys
from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.train import fit
cfg = TrainConfig(**json.loads(sys.argv[1]))
data = load_video_data(cfg)
eager = fit(cfg, data, progress=False)
compiled = fit(cfg.replace(compile=True, save_root=cfg.save_root + "_compiled"), data, progress=False)
print(json.dumps([[r.train_loss for r in h.epochs] for h in (eager, compiled)]))
"""


def test_compile_falls_back_to_eager_when_it_cannot_compile(tiny):
    import json
    import os
    import subprocess
    import sys

    cfg = tiny(num_epoch=1, partial=0.5)
    broken = {**os.environ, "CXX": "/bin/false"}  # inductor finds no working C++ compiler
    done = subprocess.run([sys.executable, "-c", FALLBACK_RUN, json.dumps(cfg.to_dict())], env=broken,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    eager, compiled = json.loads(done.stdout.splitlines()[-1])
    assert compiled == eager
    assert "No working C++ compiler" in done.stderr


def test_an_untrained_residual_model_scores_copy_previous_one_step_and_copy_first_free_running(tiny):
    # it copies the previous frame exactly, whatever z: the two figures must be the two baselines
    cfg = tiny(frame_output="residual", val_vi_len=20)
    data = load_video_data(cfg)
    model = VideoCVAE(cfg)
    one_step = validate_one_step(model, data.val_images, data.val_labels, cfg, seed=1)
    rollout = validate(model, data.val_images, data.val_labels, cfg, seed=1).psnr
    assert one_step.shape == rollout.shape == (19,)
    assert one_step == pytest.approx(data.baselines.previous, abs=0.05)
    assert rollout == pytest.approx(data.baselines.first, abs=0.05)


def test_elbo_loss_puts_the_kl_on_the_pixels_footing(tiny):
    kl = torch.tensor(6144.0)
    assert kl_term(tiny(loss="lab"), kl, frame_elements=3 * 32 * 64).item() == 6144.0
    assert kl_term(tiny(loss="elbo"), kl, frame_elements=3 * 32 * 64).item() == 1.0


@pytest.mark.parametrize("name", ["light", "lab"])
def test_each_model_trains_an_epoch_and_reports_every_figure(tiny, name):
    cfg = tiny(model=name, N_dim=4, frame_output="mask", augment=True, num_epoch=1)
    history = fit(cfg, load_video_data(cfg), progress=False)
    report = history.epochs[0]
    assert all(math.isfinite(value) for value in (report.train_loss, report.val_psnr, report.val_psnr_1step))
    assert checkpoint.config_of(checkpoint.load(history.last_checkpoint), "x").model == name
