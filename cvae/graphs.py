"""A rollout step captured as a CUDA graph: one launch per frame instead of one per kernel.

A 630-frame validation rollout runs the same small step 629 times at batch 1, so on a GPU it is
bound by kernel launches, not arithmetic; replaying a captured graph removes the launch cost.
"""
from __future__ import annotations

from typing import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
WARMUP_CALLS = 3  # cuDNN picks its algorithms and the allocator settles before capture


def captured(step: Step, *examples: torch.Tensor) -> Step:
    """`step` replayed from a CUDA graph captured on copies of `examples` (CUDA tensors of one device).

    The returned function copies its arguments into the graph's input buffers and returns the
    graph's output buffer, which the next call overwrites: the caller copies it before calling again.
    Run it in the autocast state it was captured in, with autocast's weight cache off. A capture that
    fails raises: an op that cannot be captured is a bug to fix, not a path to hide.
    """
    device = examples[0].device
    inputs = [example.clone() for example in examples]
    with torch.cuda.device(device):  # streams and the graph on the tensors' device, not the current one
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up and capture share a stream, so its library handles exist
            for _ in range(WARMUP_CALLS):
                step(*inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                output = step(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)

    def replay(*arguments: torch.Tensor) -> torch.Tensor:
        for buffer, argument in zip(inputs, arguments):
            buffer.copy_(argument)
        graph.replay()
        return output

    return replay
