"""Where a model runs: device resolution and bf16 autocast.

Two autocast policies:

* :func:`autocast` — training and evaluation (the engine, the methods, the benchmarks' evaluation
  numbers): bf16 on CUDA only. On CPU it stays fp32: training the EfficientNet-Lite0 DeepLabV3+ in
  bf16 was measured slower there, and evaluation scores must not depend on which CPU ran them.
* :func:`inference_autocast` — slide and image prediction (:mod:`tissueseg.slides.predict`):
  bf16 on CUDA, and on CPUs whose matrix units do bf16 natively (Intel AMX, :func:`cpu_has_amx_bf16`),
  where oneDNN's bf16 convolutions in channels_last made LRASPP-MobileNetV3 inference 1.4–1.8× faster
  than fp32 (BENCHMARKS.md, "Peer: TIAToolbox") with class maps agreeing on all but a few pixels in a
  million. Other CPUs (no AMX: bf16 is emulated
  and slower) stay fp32.
"""

from __future__ import annotations

import functools
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → this rank's CUDA device when available, else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context elsewhere (training and evaluation stay fp32 on CPU, see the
    module docstring; prediction uses :func:`inference_autocast`)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@functools.lru_cache(maxsize=None)
def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Intel AMX: ``amx_bf16`` and ``amx_tile``) and this torch
    build's oneDNN can use it. False when torch cannot tell (older torch, non-x86 CPUs)."""
    if not torch.backends.mkldnn.is_available():
        return False
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            c = caps()
            return bool(c.get("amx_bf16", False) and c.get("amx_tile", False))
        except Exception:  # noqa: BLE001 - cpuinfo failures mean "unknown", i.e. stay fp32
            return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # older torch: only the private probes
    try:
        return bool(probe is not None and probe() and torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001
        return False


def inference_dtype(device: torch.device, enabled: bool = True) -> torch.dtype:
    """The compute dtype prediction runs in: bf16 when ``enabled`` on CUDA or on an AMX CPU, else fp32."""
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_amx_bf16())):
        return torch.bfloat16
    return torch.float32


def inference_autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast for prediction where it is faster (CUDA, AMX CPUs: :func:`inference_dtype`); a no-op
    context elsewhere or when ``enabled`` is False (fp32)."""
    dtype = inference_dtype(device, enabled)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
