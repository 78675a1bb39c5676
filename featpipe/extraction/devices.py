"""Devices: --device as a device name (``resolve_device``, shared with finetune), and --devices: one local
worker per GPU, each with its own copy of the network.

``parse_devices`` turns the option into device names; ``worker_devices`` is the
plan of the local workers (worker name -> device). A local worker is a set of
task threads of the client's process (executors.LocalExecutor), named "0", "1", ...; they
share its decode threads (Pillow and nvJPEG release the GIL). Those two are plain functions of their inputs
(the GPU count is passed in), so they are tested without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .config import ExtractConfig


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' when there is a GPU, else 'cpu'; checks a requested GPU exists (imports torch).

    Raises:
        UsageError: not a device name, or a GPU this machine does not have.
    """
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        index = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(index).isdigit():
            raise UsageError(f"--device {device!r} is not valid; use auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device!r} asked for a GPU but CUDA is not available; use --device cpu")
        if int(index) >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        return f"cuda:{index}"
    raise UsageError(f"--device {device!r} is not valid; use auto, cpu, cuda or cuda:N")


def parse_devices(text: str, gpu_count: int) -> tuple[str, ...]:
    """'all' -> every visible GPU; 'cuda:0,cuda:1' (or '0,1') -> those, checked against ``gpu_count``.

    Raises:
        UsageError: no GPU, an unknown or repeated device, or a GPU this machine does not have.
    """
    if text.strip() == "all":
        if gpu_count < 1:
            raise UsageError("--devices all: this machine has no CUDA GPU; leave out --devices (or use --device cpu)")
        return tuple(f"cuda:{i}" for i in range(gpu_count))
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        index = part.removeprefix("cuda:")
        if not index.isdigit():
            raise UsageError(f"--devices takes all or a list such as cuda:0,cuda:1, got {part!r} in {text!r}")
        if int(index) >= gpu_count:
            have = f"cuda:0 .. cuda:{gpu_count - 1}" if gpu_count else "none"
            raise UsageError(f"--devices {text!r}: this machine has {gpu_count} GPU(s) ({have})")
        name = f"cuda:{int(index)}"
        if name in out:
            raise UsageError(f"--devices {text!r} names {name} twice; give each GPU once")
        out.append(name)
    return tuple(out)


def local_devices(config: ExtractConfig) -> tuple[str, ...]:
    """--devices as device names (checked against the GPUs this machine has); () without it."""
    if config.devices is None:
        return ()
    import torch

    return parse_devices(config.devices, torch.cuda.device_count() if torch.cuda.is_available() else 0)


@dataclass(frozen=True)
class WorkerSlot:
    """One local worker: its name (the local executor names them "0", "1", ...) and its device."""

    name: str
    device: str


def worker_devices(devices: tuple[str, ...]) -> tuple[WorkerSlot, ...]:
    """One worker per device, in the order given."""
    return tuple(WorkerSlot(str(i), d) for i, d in enumerate(devices))


def device_of_worker(slots: tuple[WorkerSlot, ...], worker_name) -> str:
    """The device of the local worker called ``worker_name`` (a task asks which worker runs it)."""
    for slot in slots:
        if slot.name == str(worker_name):
            return slot.device
    raise UsageError(f"worker {worker_name!r} is not one of --devices' workers ({', '.join(s.name for s in slots)})")
