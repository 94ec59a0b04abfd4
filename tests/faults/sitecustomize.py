"""Faults for the fault-injection tests, in every Python process started with `PYTHONPATH=tests/faults`.

Python imports `sitecustomize` at start-up, so the sweep's worker processes get the fault too (forks of
the forkserver a launcher started with this environment), without any shipped code knowing about it.
The environment says which fault:

  CVAE_TEST_OOM_CHANNELS=40    torch.OutOfMemoryError in the forward pass of a Conv2d with 40 output channels
  CVAE_TEST_ERROR_CHANNELS=48  RuntimeError in the same place

so only the trials whose model has such a layer (a grid over F_dim) fail, as a model too large for
its GPU would, and the others train normally. Without these variables this file does nothing.
"""
import os

_FAULTS = {"CVAE_TEST_OOM_CHANNELS": "oom", "CVAE_TEST_ERROR_CHANNELS": "error"}
_CHANNELS = {int(os.environ[name]): kind for name, kind in _FAULTS.items() if os.environ.get(name)}

if _CHANNELS:
    import torch

    def _raise_for_channels(module, inputs):
        kind = _CHANNELS.get(getattr(module, "out_channels", None)) if isinstance(module, torch.nn.Conv2d) else None
        if kind == "oom":
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB (injected by "
                                         f"tests/faults for a {module.out_channels}-channel layer)")
        if kind == "error":
            raise RuntimeError(f"injected by tests/faults for a {module.out_channels}-channel layer")

    torch.nn.modules.module.register_module_forward_pre_hook(_raise_for_channels)
