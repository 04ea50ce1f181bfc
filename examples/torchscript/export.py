#!/usr/bin/python3
"""Hand clhost your own model and data: a CNN as TorchScript, Fashion-MNIST as HDF5.

Run with Debian's python3 (python3-torch 1.13.1 is the LibTorch version clhost links):
    /usr/bin/python3 examples/torchscript/export.py OUTPUT_DIR [--limit N]
writes OUTPUT_DIR/cnn.pt and OUTPUT_DIR/fashion_mnist.h5 for examples/torchscript/split_fmnist_cnn.toml.
"""
import argparse
import gzip
import os

import h5py
import numpy as np
import torch
import torch.nn as nn


def read_idx(path):
    """An MNIST-family IDX file (gzip or not) as a numpy array."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--limit", type=int, default=0, help="keep the first N samples per split")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    # The model: any module whose forward takes one Tensor and returns [N, classes] logits.
    # A Sequential (scripted or traced) is split into layers, so the exact batched Fisher
    # applies to each Conv2d and Linear.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))
    torch.jit.script(model).save(os.path.join(args.out, "cnn.pt"))

    # The data: samples [N, 28, 28] uint8 (any numeric type works), integer labels [N].
    # Chunks of 256 samples let clhost stream a file larger than data.max_resident.
    with h5py.File(os.path.join(args.out, "fashion_mnist.h5"), "w") as f:
        for split, prefix in (("train", "train"), ("test", "t10k")):
            x = read_idx(os.path.join(args.fmnist, prefix + "-images-idx3-ubyte.gz"))
            y = read_idx(os.path.join(args.fmnist, prefix + "-labels-idx1-ubyte.gz"))
            if args.limit:
                x, y = x[:args.limit], y[:args.limit]
            f.create_dataset(split + "/x", data=x, chunks=(min(256, len(x)), 28, 28),
                             compression="gzip", compression_opts=4)
            f.create_dataset(split + "/y", data=y.astype(np.int64))
    print("wrote", os.path.join(args.out, "cnn.pt"), "and",
          os.path.join(args.out, "fashion_mnist.h5"))


if __name__ == "__main__":
    main()
