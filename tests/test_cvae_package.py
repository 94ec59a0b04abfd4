"""The cvae package as a whole: no module of it imports Optuna or MLflow, and `python -m cvae` runs its commands."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# in a fresh interpreter: import every module of cvae (pkgutil finds new ones), then name what got imported
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import cvae
names = [module.name for module in pkgutil.walk_packages(cvae.__path__, "cvae.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def cvae_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvae", *args], capture_output=True, text=True, timeout=120)


def test_no_cvae_module_imports_optuna_or_mlflow():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = json.loads(done.stdout)
    assert {"cvae.train", "cvae.predict", "cvae.train_cli", "cvae.predict_cli", "cvae.__main__"} \
        <= set(imported["modules"])
    assert not {"optuna", "mlflow"} & set(imported["loaded"])


@pytest.mark.parametrize("command", ["train", "predict"])
def test_each_command_lists_its_own_flags(command):
    done = cvae_command(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m cvae {command} ")
    assert ("--kl_anneal_type" in done.stdout) == (command == "train")
    assert ("--samples" in done.stdout) == (command == "predict")


def test_an_unknown_command_is_refused_with_the_commands_there_are():
    done = cvae_command("fit")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == \
        "python -m cvae: error: argument command: invalid choice: 'fit' (choose from 'train', 'predict')"


def test_a_bad_train_flag_is_the_train_commands_one_line():
    done = cvae_command("train", "--kl_anneal_type", "Linear")
    assert done.returncode == 2
    assert done.stderr == "error: kl_anneal_type='Linear': must be one of Cyclical, Monotonic, None\n"
