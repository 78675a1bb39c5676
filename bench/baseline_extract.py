#!/usr/bin/env python3
"""The baseline featpipe is measured against: the extraction loop people write by hand.

It follows the "ConvNet as fixed feature extractor" part of the PyTorch
transfer-learning tutorial: torchvision's ImageFolder, a DataLoader with
worker processes, the network in eval mode without its classifier, and a loop
that writes each batch of features into an HDF5 file with h5py. Two things are
chosen to make it a fair opponent rather than a weak one: the preprocessing is
the model's own (timm's data config, as featpipe uses), and the loop runs under
``torch.inference_mode()``.

    python bench/baseline_extract.py IMAGE_DIR OUT.h5 [--model resnet18] [--batch-size 32]
        [--workers 2] [--device cpu] [--checkpoint STATE_DICT.pt]

Prints one line, ``N images in T s: R img/s``. The clock starts when the loop
starts (DataLoader workers starting up included) and stops when the file is
closed; building the model and listing the images are not timed.
"""
from __future__ import annotations

import argparse
import time

import h5py
import numpy as np
import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", help="an ImageFolder tree: one subfolder per class")
    ap.add_argument("output", help="the HDF5 file to write")
    ap.add_argument("--model", default="resnet18", help="a timm model name")
    ap.add_argument("--checkpoint", default=None, help="a state dict to load (default: random weights)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    # num_classes=0 drops the classifier: the output is the pooled penultimate features.
    net = timm.create_model(args.model, pretrained=False, num_classes=0)
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True), strict=False)
    net = net.eval().to(args.device)
    transform = create_transform(**resolve_data_config({}, model=net))
    dataset = ImageFolder(args.images, transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=args.device.startswith("cuda"))
    n = len(dataset)

    start = time.perf_counter()
    with h5py.File(args.output, "w") as f, torch.inference_mode():
        features = f.create_dataset("features", shape=(n, net.num_features), dtype="float32")
        labels = f.create_dataset("labels", shape=(n,), dtype="int64")
        row = 0
        for images, targets in loader:
            out = net(images.to(args.device, non_blocking=True)).float().cpu().numpy()
            features[row:row + len(out)] = out
            labels[row:row + len(out)] = targets.numpy()
            row += len(out)
        f.create_dataset("paths", data=np.asarray([path for path, _ in dataset.samples], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("classes", data=np.asarray(dataset.classes, dtype=object), dtype=h5py.string_dtype("utf-8"))
    seconds = time.perf_counter() - start
    print(f"{n} images in {seconds:.1f} s: {n / seconds:.1f} img/s")


if __name__ == "__main__":
    main()
