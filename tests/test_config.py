import pytest

from cvae.config import TrainConfig, load_yaml_config
from cvae.errors import ConfigError


@pytest.mark.parametrize("changes, key", [
    ({"kl_anneal_type": "Linear"}, "kl_anneal_type"),
    ({"lr": -0.1}, "lr"),
    ({"frame_H": 4}, "frame_H"),
    ({"F_dim": 100}, "F_dim"),
    ({"D_out_dim": 20}, "D_out_dim"),
    ({"optim": "SGD"}, "optim"),
    ({"tfr": 1.5}, "tfr"),
    ({"batch_size": "two"}, "batch_size"),
])
def test_bad_values_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=f"^{key}="+"|^"+key+":"):
        TrainConfig(**changes)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="unknown TrainConfig key 'kl_anneal_typ'.*kl_anneal_type"):
        TrainConfig.from_dict({"kl_anneal_typ": "Cyclical"})


def test_values_from_text_are_coerced():
    cfg = TrainConfig.from_dict({"lr": "1e-4", "milestones": "3,6", "fast_train": "true", "num_epoch": "5"})
    assert (cfg.lr, cfg.milestones, cfg.fast_train, cfg.num_epoch) == (1e-4, (3, 6), True, 5)


def test_yaml_config_round_trip(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.0002\nkl_anneal_type: Monotonic\nmilestones: [4, 8]\n")
    cfg = load_yaml_config(path)
    assert (cfg.lr, cfg.kl_anneal_type, cfg.milestones) == (0.0002, "Monotonic", (4, 8))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown TrainConfig key 'learning_rate'"):
        load_yaml_config(path)
