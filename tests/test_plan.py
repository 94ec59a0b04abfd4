"""The trial plan's configuration identities: group_key is written to disk, so its exact values are pinned."""
from __future__ import annotations

import pytest

from experiments.plan import group_key
from experiments.spec_loader import parse_spec

# Computed by the code that named the trial folders, Optuna user attrs and MLflow tags of every sweep run so
# far: a changed value would leave a resumed study unable to find its finished cells.
PINNED_KEYS = [
    ({}, "bf21a9e8fb"),  # the base configuration
    ({"seed": 3}, "bf21a9e8fb"),  # a seed is no part of the identity
    ({"kl_anneal_type": "Cyclical", "kl_anneal_ratio": 0.5}, "856d92c633"),
    ({"kl_anneal_ratio": 0.5, "kl_anneal_type": "Cyclical"}, "856d92c633"),  # key order does not count
    ({"kl_anneal_type": "Cyclical", "kl_anneal_ratio": 0.5, "seed": 7}, "856d92c633"),
    ({"lr": 1e-3}, "1499474f42"),
    ({"lr": 0.001}, "1499474f42"),  # one float, however it is written
    ({"batch_size": 8}, "997d965356"),
    ({"batch_size": 8.0}, "07be671992"),  # 8 and 8.0 differ: the spec makes both TrainConfig's 8 first
    ({"bf16": True}, "5a37e78ae4"),
    ({"bf16": False}, "39fda236ee"),
    ({"kl_anneal_type": None}, "a5b86dc776"),
    ({"kl_anneal_type": "None"}, "d30f361a54"),  # the string, as sweeps/quick.yaml's third cell
    ({"milestones": (10, 20)}, "fff621f7dd"),
    ({"milestones": [10, 20]}, "fff621f7dd"),
    ({"milestones": "10,20"}, "9138fc1e36"),  # how a grid cell holds a tuple field
    ({"tfr": 0.0, "tfr_sde": 10, "optim": "AdamW", "bf16": True, "milestones": (10, 20)}, "fa7bb059f6"),
]


@pytest.mark.parametrize("overrides, key", PINNED_KEYS, ids=[str(overrides) for overrides, _ in PINNED_KEYS])
def test_group_key_keeps_the_values_written_to_disk(overrides, key):
    assert group_key(overrides) == key


def test_a_grid_cell_read_from_a_spec_keeps_its_pinned_key():
    spec = parse_spec({"name": "pinned", "parameters": {"lr": ["1e-3", 0.0003], "milestones": ["10, 20"],
                                                        "kl_anneal_type": ["None"]}})
    assert [group_key(cell) for cell in spec.cells] == ["5a10a1eeed", "c287f105b7"]
