"""Devices: a ``device`` setting as a device name (``resolve_device``, shared with finetune and predict), and
``ExtractConfig.devices``: one local worker per GPU, each with its own copy of the network.

``parse_devices`` turns the option into device names; ``worker_devices`` is the
plan of the local workers (worker name -> device). A local worker is a set of
task threads of the client's process (executors.LocalExecutor), named "0", "1", ...; they
share its decode threads (Pillow and nvJPEG release the GIL). Those two are plain functions of their inputs
(the GPU count is passed in), so they are tested without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..settings import EXTRACT, Group, shown

if TYPE_CHECKING:
    from .config import ExtractConfig


def resolve_device(device: str, group: Group = EXTRACT) -> str:
    """'auto' -> 'cuda:0' when there is a GPU, else 'cpu'; checks a requested GPU exists (imports torch).
    ``group``: whose ``device`` setting it is, for the message (settings.FINETUNE in finetune).

    Raises:
        SettingError: not a device name, or a GPU this machine does not have.
    """
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        index = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(index).isdigit():
            raise group.refuse(f"{{device}} {shown(device)} is not valid; use auto, cpu, cuda or cuda:N", device)
        if not torch.cuda.is_available():
            raise group.refuse(f"{{device}} {shown(device)} asked for a GPU but CUDA is not available; use cpu", device)
        if int(index) >= torch.cuda.device_count():
            raise group.refuse(f"{{device}} {shown(device)}: this machine has {torch.cuda.device_count()} GPU(s); use "
                               f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}", device)
        return f"cuda:{index}"
    raise group.refuse(f"{{device}} {shown(device)} is not valid; use auto, cpu, cuda or cuda:N", device)


def parse_devices(text: str, gpu_count: int) -> tuple[str, ...]:
    """'all' -> every visible GPU; 'cuda:0,cuda:1' (or '0,1') -> those, checked against ``gpu_count``.

    Raises:
        SettingError: no GPU, an unknown or repeated device, or a GPU this machine does not have (``devices``).
    """
    if text.strip() == "all":
        if gpu_count < 1:
            raise EXTRACT.refuse("{devices} 'all': this machine has no CUDA GPU; leave out {devices} "
                                 "(or set {device} to cpu)", text)
        return tuple(f"cuda:{i}" for i in range(gpu_count))
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        index = part.removeprefix("cuda:")
        if not index.isdigit():
            raise EXTRACT.refuse(f"{{devices}} takes all or a list such as cuda:0,cuda:1, got {shown(part)} in "
                                 f"{shown(text)}", text)
        if int(index) >= gpu_count:
            have = f"cuda:0 .. cuda:{gpu_count - 1}" if gpu_count else "none"
            raise EXTRACT.refuse(f"{{devices}} {shown(text)}: this machine has {gpu_count} GPU(s) ({have})", text)
        name = f"cuda:{int(index)}"
        if name in out:
            raise EXTRACT.refuse(f"{{devices}} {shown(text)} names {name} twice; give each GPU once", text)
        out.append(name)
    return tuple(out)


def local_devices(config: ExtractConfig) -> tuple[str, ...]:
    """``config.devices`` as device names (checked against the GPUs this machine has); () without it."""
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
    raise EXTRACT.refuse(f"worker {shown(worker_name)} is not one of {{devices}}' workers "
                         f"({', '.join(s.name for s in slots)})", worker_name)
