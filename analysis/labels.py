"""Readable names for a configuration, its KL annealing setting, its teacher forcing setting and the copy baselines.

A configuration is named by what its sweep varied, in the order the sweep lists it:
`Cyclical (20 cycles, ratio 0.5)`, `tfr 0 (teacher forcing off)`, `lr 3e-4, cosine`. Epochs in
names are counted from 1, as the trainer's progress bar and checkpoints count them.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

KL_KEYS = ("kl_anneal_type", "kl_anneal_cycle", "kl_anneal_ratio")
TFR_KEYS = ("tfr", "tfr_sde", "tfr_d_step")
LR_SCHEDULE = "lr_schedule"
# the trivial predictors a model must beat (cvae.metrics.CopyBaselines), as the figures' legends and the table name them
COPY_FIRST = "copy first frame"
COPY_PREVIOUS = "copy previous frame"
_LABEL_KEY = re.compile(r"(?:^|, )([A-Za-z_]\w*)=")


def swept_keys(group_label: str) -> list[str]:
    """The keys of a sweep's group label, `kl_anneal_type=Cyclical, milestones=2,5` -> [kl_anneal_type, milestones]."""
    return _LABEL_KEY.findall(group_label)


def configuration_label(swept: Sequence[str], params: Mapping[str, Any]) -> str:
    """A readable name from the swept keys and the run's (typed) params; 'base' when nothing was swept."""
    phrases: list[str] = []
    for key in swept:
        if key in KL_KEYS:
            phrase = kl_setting(params)
        elif key in TFR_KEYS:
            phrase = tfr_setting(params)
        elif key == LR_SCHEDULE:
            phrase = str(params[key])
        else:
            phrase = f"{key} {number(params[key])}"
        if phrase not in phrases:
            phrases.append(phrase)
    return ", ".join(phrases) or "base"


def kl_setting(params: Mapping[str, Any]) -> str:
    """`Cyclical (20 cycles, ratio 0.5)`, `Monotonic (ratio 0.5)` or `None (β = 1)`; only the knobs the type reads."""
    kind = params["kl_anneal_type"]
    ratio = f"ratio {number(params['kl_anneal_ratio'])}"
    if kind == "Cyclical":
        return f"Cyclical ({number(params['kl_anneal_cycle'])} cycles, {ratio})"
    if kind == "Monotonic":
        return f"Monotonic ({ratio})"
    return f"{kind} (β = 1)"


def tfr_setting(params: Mapping[str, Any]) -> str:
    """`tfr 0 (teacher forcing off)`, `tfr 1 (teacher forcing on)` or `tfr 1, -0.1/epoch after epoch 11`."""
    tfr, start, step = float(params["tfr"]), int(params["tfr_sde"]), float(params["tfr_d_step"])
    last_epoch = int(params["num_epoch"])
    if tfr == 0:
        return "tfr 0 (teacher forcing off)"
    # teacher_forcing_ratio decays from the 0-based epoch tfr_sde + 1, which is epoch tfr_sde + 2 counted from 1
    if step == 0 or start + 2 > last_epoch:
        return "tfr 1 (teacher forcing on)" if tfr == 1 else f"tfr {number(tfr)}"
    return f"tfr {number(tfr)}, -{number(step)}/epoch after epoch {start + 1}"


def number(value: Any) -> str:
    """3 significant digits, small numbers as `3e-4`; anything else as str."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"
