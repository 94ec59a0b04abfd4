"""A rollout step captured as a CUDA graph: one launch per frame instead of one per kernel.

A 630-frame validation rollout runs the same small step 629 times at batch 1, so on a GPU it is
bound by kernel launches, not arithmetic; replaying a captured graph removes the launch cost.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
WARMUP_CALLS = 3  # cuDNN picks its algorithms and the allocator settles before capture


def captured(step: Step, *examples: torch.Tensor) -> Step:
    """`step` replayed from a CUDA graph captured on copies of `examples`; `step` itself if capture fails.

    The returned function copies its arguments into the graph's input buffers and returns the
    graph's output buffer, which the next call overwrites: the caller copies it before calling again.
    Run it in the autocast state it was captured in, with autocast's weight cache off.
    """
    inputs = [example.clone() for example in examples]
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):  # the warm-up's stream: its library handles already exist
            output = step(*inputs)
    except RuntimeError as err:  # e.g. an op that cannot be captured: the eager step gives the same frames
        log.warning("CUDA graph capture of the rollout step failed, running it eagerly: %s",
                    str(err).splitlines()[0])
        return step

    def replay(*arguments: torch.Tensor) -> torch.Tensor:
        for buffer, argument in zip(inputs, arguments):
            buffer.copy_(argument)
        graph.replay()
        return output

    return replay
