"""torch.compile for the HF decoders the teacher and student run."""

from __future__ import annotations

from typing import Any

import torch


def wants_compile(setting: bool | None, device: torch.device) -> bool:
    """None means: on CUDA only. There the norms, rotary embedding and activations of a block
    run as many small kernels (about as much time as its matmuls on an H200); on a small CPU
    model the compile time (tens of seconds) outweighs the gain."""
    return device.type == "cuda" if setting is None else setting


def compile_blocks(decoder: Any) -> None:  # a transformers decoder (has .layers)
    """Compile each decoder block's forward in place, as torchtitan does before FSDP2.

    The bound forward is compiled rather than the module, so FSDP2's hooks (all-gather,
    reshard) stay eager around it and the state-dict names do not change (a compiled module
    would add `_orig_mod.` to every name the rollout engine and checkpoints see). All blocks
    share one compiled graph; the matmuls stay cuBLAS.
    """
    for block in decoder.layers:
        block.forward = torch.compile(block.forward)
