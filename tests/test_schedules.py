import pytest
import torch

from cvae.config import TrainConfig
from cvae.schedules import kl_beta, make_lr_scheduler, make_optimizer, teacher_forcing_ratio


def betas(cfg):
    return [round(kl_beta(cfg, epoch), 4) for epoch in range(cfg.num_epoch)]


def learning_rates(cfg, epochs):
    """The learning rate of each epoch, from the optimizer and scheduler stepped as the trainer steps them."""
    optimizer = make_optimizer(cfg, [torch.zeros(1, requires_grad=True)])
    scheduler = make_lr_scheduler(cfg, optimizer)
    rates = []
    for _ in range(epochs):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_cyclical_rises_over_each_cycle_then_restarts():
    cfg = TrainConfig(kl_anneal_type="Cyclical", num_epoch=14, kl_anneal_cycle=2, kl_anneal_ratio=1.0)
    # 7 epochs a cycle; beta is the curve's value at the end of each epoch
    expected_cycle = [0.1429, 0.2857, 0.4286, 0.5714, 0.7143, 0.8571, 1.0]
    assert betas(cfg) == expected_cycle * 2


def test_cyclical_ratio_reaches_one_early_and_stays():
    cfg = TrainConfig(kl_anneal_type="Cyclical", num_epoch=20, kl_anneal_cycle=2, kl_anneal_ratio=0.5)
    assert betas(cfg)[:10] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert betas(cfg)[10:] == betas(cfg)[:10]


@pytest.mark.parametrize("num_epoch, cycles", [(10, 10), (5, 10), (1, 10), (3, 3)])
def test_cyclical_never_stuck_at_zero_when_epochs_do_not_exceed_cycles(num_epoch, cycles):
    cfg = TrainConfig(kl_anneal_type="Cyclical", num_epoch=num_epoch, kl_anneal_cycle=cycles, kl_anneal_ratio=1.0)
    assert betas(cfg) == [1.0] * num_epoch


def test_monotonic_is_one_cycle():
    cfg = TrainConfig(kl_anneal_type="Monotonic", num_epoch=10, kl_anneal_cycle=10, kl_anneal_ratio=0.5)
    assert betas(cfg) == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_none_is_always_one():
    cfg = TrainConfig(kl_anneal_type="None", num_epoch=5)
    assert betas(cfg) == [1.0] * 5


def test_teacher_forcing_decays_after_start_epoch_and_stops_at_zero():
    cfg = TrainConfig(tfr=1.0, tfr_sde=10, tfr_d_step=0.1, num_epoch=30)
    ratios = [teacher_forcing_ratio(cfg, epoch) for epoch in range(30)]
    assert ratios[:11] == [1.0] * 11
    assert ratios[11:21] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    assert ratios[21:] == [0.0] * 9


def test_teacher_forcing_off_stays_off():
    cfg = TrainConfig(tfr=0.0, tfr_sde=0, tfr_d_step=0.1)
    assert [teacher_forcing_ratio(cfg, epoch) for epoch in range(3)] == [0.0, 0.0, 0.0]


def test_multistep_lr():
    cfg = TrainConfig(lr=1e-3, lr_schedule="multistep", milestones=(2, 5), gamma=0.1, num_epoch=7)
    assert learning_rates(cfg, 7) == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5])


def test_cosine_lr_reaches_minimum_at_the_end():
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine", lr_min=1e-5, num_epoch=10)
    rates = learning_rates(cfg, 11)
    assert rates[0] == pytest.approx(1e-3)
    assert rates[5] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert rates[10] == pytest.approx(1e-5)


def test_constant_lr():
    cfg = TrainConfig(lr=3e-4, lr_schedule="constant", num_epoch=4)
    assert learning_rates(cfg, 4) == pytest.approx([3e-4] * 4)


def test_fused_optimizer_is_not_used_on_the_cpu():
    optimizer = make_optimizer(TrainConfig(optim="AdamW"), [torch.zeros(3, requires_grad=True)])
    assert not optimizer.defaults["fused"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels need CUDA")
def test_fused_optimizer_on_cuda_unless_switched_off():
    params = [torch.zeros(3, requires_grad=True, device="cuda")]
    assert make_optimizer(TrainConfig(optim="AdamW"), params).defaults["fused"]
    assert not make_optimizer(TrainConfig(fused_optimizer=False), params).defaults["fused"]
