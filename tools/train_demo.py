"""Train the embedded demo model and write wageubn_sim/demo_data/digits_demo.npz.

    python tools/train_demo.py [--epochs 40] [--seed 0] [--out FILE] [--force]

The model (`wageubn_sim.demo.demo_model`: a small CNN with two residual blocks) is converted
with `quantize_model` and trained through the WAGEUBN torch path (8-bit W/A, E1/E2 errors, G
gradients with stochastic rounding, G_BN), with plain SGD + momentum in float on top, on
scikit-learn's bundled 8x8 digits (1797 images; 80/20 split, fixed seed). The file holds
the trained parameters and buffers (float32/int64 arrays, no pickle), the training and the
held-out test images (uint8, 0..16) with their labels (for `wageubn-sim train`, offline), and the
accuracy measured here. Needs scikit-learn.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import wageubn_sim
from wageubn_sim.files.write import write_file_atomically
from wageubn_sim.demo import DEMO_DATA, demo_model, images_to_input


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEMO_DATA))
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args()
    if Path(args.out).exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    torch.manual_seed(args.seed)
    model = wageubn_sim.quantize_model(demo_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    x_train = torch.from_numpy(images_to_input(images[train])).float()
    y_train = torch.from_numpy(labels[train])
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        model.train()
        for batch in np.array_split(rng.permutation(len(train)), len(train) // 64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        x_test = torch.from_numpy(images_to_input(images[test])).float()
        acc = (model(x_test).argmax(1).numpy() == labels[test]).mean()
    print(f"test accuracy of the WAGEUBN torch path after {args.epochs} epochs: {acc:.4f}")
    state = {f"state/{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **state, test_images=images[test], test_labels=labels[test],
                        train_images=images[train], train_labels=labels[train],
                        torch_accuracy=np.float64(acc), epochs=np.int64(args.epochs),
                        seed=np.int64(args.seed))
    write_file_atomically(args.out, buf.getvalue(), overwrite=args.force)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
