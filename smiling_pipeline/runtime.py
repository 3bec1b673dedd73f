"""Compute settings: device, torch threads and seeding, set deliberately in one place."""

from __future__ import annotations

from pathlib import Path

import torch

from smiling_pipeline.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable CUDA device is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {device!r} requested but this machine has {count} CUDA device(s); "
                        f"use --device cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}")
    return dev


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: CUDA with bf16 support, or a CPU with
    AVX512-BF16 or AMX (read from /proc/cpuinfo; elsewhere, emulated bf16 would be slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str) -> None:
    """``runtime.precision`` / ``--precision`` must be one of auto, float32, bfloat16."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise UserError(f"unknown precision {precision!r}; use auto, float32 or bfloat16")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The score models' matmul dtype: ``auto`` is bfloat16 where it is native (faster at the same
    estimator accuracy: docs/performance.md), else float32."""
    check_precision(precision)
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return getattr(torch, precision)


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` / ``bfloat16``: how a resolved precision is recorded (MLflow params, benchmark results)."""
    return str(dtype).removeprefix("torch.")


def set_threads(threads: int) -> None:
    """Torch intra-op threads (one beats two for the small MLPs here)."""
    torch.set_num_threads(threads)
