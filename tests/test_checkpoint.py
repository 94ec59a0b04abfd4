import collections
import os
import signal

import pytest
import torch

from cvae.checkpoint import save_atomic


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
