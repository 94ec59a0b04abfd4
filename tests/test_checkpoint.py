import collections
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from cvae import checkpoint, light_model
from cvae.checkpoint import save_atomic
from cvae.data import load_video_data
from cvae.predict import load_model
from cvae.train import fit


class InterruptWhenPickled:
    """Sends this process a Ctrl-C while torch.save is writing it."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (collections.OrderedDict, ())  # a type weights_only loading allows


def test_a_ctrl_c_during_a_save_waits_for_the_complete_file(tmp_path):
    path = tmp_path / "epoch_0001.ckpt"
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"weights": torch.arange(3), "interrupt": InterruptWhenPickled()}, path)
    state = torch.load(path, weights_only=True)  # written whole before the interrupt went on
    assert torch.equal(state["weights"], torch.arange(3)) and state["interrupt"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0001.ckpt"]  # no temporary file left


OLD_CHECKPOINT = Path(__file__).parent / "fixtures" / "checkpoint_main_7cc6087.ckpt"  # written by main at 7cc6087
# written by main at d699114 (test_train's TINY config, one epoch): the epoch reports before val_ssim
PSNR_ONLY_CHECKPOINT = Path(__file__).parent / "fixtures" / "checkpoint_main_d699114.ckpt"


def test_a_checkpoint_written_before_model_choices_loads_as_the_light_model(small_dataset, tmp_path):
    # its config has no model, frame_output, loss or augment, its epoch reports no val_psnr_1step
    state = checkpoint.load(OLD_CHECKPOINT)
    assert "model" not in state["config"] and "val_psnr_1step" not in state["history"][0]
    cfg = checkpoint.config_of(state, OLD_CHECKPOINT)
    assert (cfg.model, cfg.frame_output, cfg.loss, cfg.augment) == ("light", "residual", "lab", False)
    model, loaded_cfg = load_model(OLD_CHECKPOINT)
    assert loaded_cfg == cfg and isinstance(model.Generator, light_model.Generator)
    # it trains on from where it stopped, the old epoch's report kept with its new field unknown
    resumed = fit(cfg.replace(DR=str(small_dataset), save_root=str(tmp_path / "run"), num_epoch=2),
                  load_video_data(cfg.replace(DR=str(small_dataset))), resume_from=OLD_CHECKPOINT, progress=False)
    assert [report.epoch for report in resumed.epochs] == [0, 1]
    assert math.isnan(resumed.epochs[0].val_psnr_1step) and math.isfinite(resumed.epochs[1].val_psnr_1step)


def test_a_checkpoint_written_before_a_new_epoch_metric_resumes(small_dataset, tmp_path):
    state = checkpoint.load(PSNR_ONLY_CHECKPOINT)
    cfg = checkpoint.config_of(state, PSNR_ONLY_CHECKPOINT).replace(DR=str(small_dataset),
                                                                    save_root=str(tmp_path / "run"), num_epoch=2)
    resumed = fit(cfg, load_video_data(cfg), resume_from=PSNR_ONLY_CHECKPOINT, progress=False)
    old, new = resumed.epochs
    assert old.val_psnr == pytest.approx(23.850909, abs=1e-6) and old.val_psnr_per_frame.shape == (7,)
    assert math.isnan(old.val_ssim) and old.val_ssim_per_frame.shape == (0,)  # before SSIM: unknown
    assert new.epoch == 1 and math.isfinite(new.val_psnr) and 0 < new.val_ssim < 1
    assert new.val_ssim_per_frame.shape == (7,)
