"""Device and precision, decided in one place. Nothing else calls ``.cuda()``."""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local % max(1, torch.cuda.device_count()))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for, but no CUDA GPU is available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPU by default, full fp32 on CPU by default."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    raise ValueError(f"unknown precision {precision!r}; valid: auto, fp32, bf16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    # channels-last helps convolutions on GPUs (tensor cores) and on CPUs (oneDNN) alike
    return model.to(device).to(memory_format=torch.channels_last)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to the device; to a GPU through pinned memory, so that the copy does not
    wait for the GPU's queued work (a copy from ordinary memory synchronises with it)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def prepare_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
