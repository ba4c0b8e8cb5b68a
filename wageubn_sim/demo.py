"""The embedded demo: a small residual CNN through the WAGEUBN torch path, checked in integers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import function as F
from .convert import quantize_model
from .graph.ir import INPUT_WARNING_FRACTION


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.add = F.Add()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(x, y))


DEMO_DATA = Path(__file__).with_name("demo_data") / "digits_demo.npz"


def images_to_input(images: np.ndarray) -> np.ndarray:
    """8x8 digit images (0..16) -> the model's input, N x 1 x 8 x 8 in [0, 1]."""
    return (np.asarray(images, dtype=np.float64) / 16.0)[:, None]


def demo_model(channels: int = 8, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        ResidualBlock(channels), nn.MaxPool2d(2), ResidualBlock(channels),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def load_demo_model():
    """The trained demo model (torch path, eval mode) and its held-out digits."""
    with np.load(DEMO_DATA, allow_pickle=False) as data:
        state = {k[len("state/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("state/")}
        images, labels = data["test_images"], data["test_labels"]
        trained_accuracy = float(data["torch_accuracy"])
    model = quantize_model(demo_model())
    model.load_state_dict(state)
    return model.eval(), images, labels, trained_accuracy


def run_demo(out_dir, force: bool = False, echo=print, progress=None) -> bool:
    """Compile the demo model, compare engine and torch path on the held-out digits, and
    write the graph, a vector bundle (first 4 images) and the width audit into ``out_dir``."""
    from .files.write import refuse_existing, staged_folder
    from .graph.compare import compare
    from .graph.importer import compile_model
    from .reports.audit import audit
    from .vectors.bundle import write_bundle
    from .vectors.verify import verify_bundle

    out_dir = refuse_existing(out_dir, force)  # before the work; staged_folder checks again
    model, images, labels, _ = load_demo_model()
    x = images_to_input(images)
    graph = compile_model(model, x[:4])
    report = compare(model, x, graph)
    logits = graph.run(x).q
    with torch.no_grad():
        torch_pred = model.double()(torch.from_numpy(graph.quantize_input(x) * 2.0 ** -8)).argmax(1).numpy()
    engine_acc = float((logits.argmax(1) == labels).mean())
    torch_acc = float((torch_pred == labels).mean())
    with staged_folder(out_dir, force) as stage:
        graph.save(stage / "graph")
        write_bundle(graph, x[:4], stage / "vectors", command="wageubn-sim demo", progress=progress)
        verified = verify_bundle(stage / "vectors")
        rep = audit(graph, x)
        (stage / "audit").mkdir()
        for name, text in (("audit.json", rep.to_json()), ("audit.csv", rep.to_csv()),
                           ("audit.md", rep.to_markdown()), ("audit.html", rep.to_html())):
            (stage / "audit" / name).write_text(text)
    echo(f"demo: a WAGEUBN CNN with residual blocks on {len(labels)} held-out 8x8 digits")
    echo(f"  engine vs torch path (float64), {len(report.layers)} layers: "
         + ("bit-exact" if report.exact else f"DIVERGES at {report.first}"))
    echo(f"  accuracy: engine {engine_acc:.4f}, torch path {torch_acc:.4f}")
    echo(f"  vector bundle check: {verified}")
    echo(rep.to_table().rstrip())
    echo(f"wrote {out_dir}/graph (integer graph), {out_dir}/vectors (manifest.json + "
         f".mem/.coe/.mif/.npy), {out_dir}/audit (audit.json, .csv, .md, .html)")
    return report.exact and verified.ok and engine_acc == torch_acc


def train_comparison(epochs: int = 10, batch: int = 32, lr: float = 0.25, float_lr: float = 0.05,
                     seed: int = 0, limit: int | None = None, echo=print, progress=None,
                     step_vectors=None, force: bool = False, command: str | None = None,
                     input_warning: float = INPUT_WARNING_FRACTION) -> dict:
    """Train the demo architecture from scratch twice on the digits, on the same batches: with
    the bit-exact integer engine (full 8-bit W/A/G/E/U/BN, `training.IntegerTrainer`, learning
    rate ``lr``: G normalises gradients to at most 127 * 2**-14, so it wants a larger rate than
    float) and in float (plain torch, SGD with momentum 0.9 at ``float_lr``). Returns both
    held-out accuracies. ``step_vectors``: a folder for the training-step bundle of the first
    step. ``input_warning``: echo a warning when more than this fraction of the training inputs
    saturates or underflows in the input format (`graph.ir.input_warning`)."""
    from .function.optim import WageubnSGD
    from .training.step import IntegerTrainer

    with np.load(DEMO_DATA, allow_pickle=False) as data:
        x_train, y_train = images_to_input(data["train_images"]), data["train_labels"]
        x_test, y_test = images_to_input(data["test_images"]), data["test_labels"]
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    batches = _EpochBatches(len(y_train), epochs, batch, seed)

    torch.manual_seed(seed)
    model = quantize_model(demo_model()).double().train()
    WageubnSGD(model.parameters(), lr).snap_to_grid()
    trainer = IntegerTrainer.from_model(model, x_train[:batch], lr)
    warning = trainer.graph.inputs[0].saturation_warning(x_train, input_warning)
    if warning:
        echo(f"warning: {warning}")
    if step_vectors is not None:
        from .vectors.training import write_training_bundle
        first = next(iter(batches))
        write_training_bundle(trainer, x_train[first], y_train[first], step_vectors, force=force,
                              seed=seed, command=command)
        echo(f"wrote the training-step bundle of step 0 to {step_vectors}")
    remaining = batches.after(trainer.step_number)
    steps = remaining if progress is None else progress(remaining)
    for idx in steps:
        trainer.step(x_train[idx], y_train[idx])
    int_acc = float((trainer.evaluate(x_test).q.argmax(1) == y_test).mean())

    torch.manual_seed(seed)
    float_model = demo_model().double().train()
    opt = torch.optim.SGD(float_model.parameters(), lr=float_lr, momentum=0.9)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for idx in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(float_model(xt[idx]), yt[idx]).backward()
        opt.step()
    with torch.no_grad():
        float_acc = float((float_model.eval()(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    echo(f"trained {epochs} epochs of {len(y_train)} digits, batch {batch}, seed {seed}; "
         f"lr {lr} (integer), {float_lr} (float)")
    echo(f"  held-out accuracy ({len(y_test)} digits): integer 8-bit engine {int_acc:.4f}, "
         f"float {float_acc:.4f}")
    return {"integer": int_acc, "float": float_acc, "steps": len(batches)}


class _EpochBatches:
    """The training batches: per epoch a permutation of the samples (one seeded generator, epoch
    after epoch), cut into full batches. Drawn as they are used, so that memory does not grow with
    the epochs; iterating again draws the same batches."""

    def __init__(self, samples: int, epochs: int, batch: int, seed: int, skip: int = 0):
        self.samples, self.epochs, self.batch, self.seed, self.skip = samples, epochs, batch, seed, skip

    def __len__(self):
        return self.epochs * (self.samples // self.batch) - self.skip

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        skip = self.skip
        for _ in range(self.epochs):
            order = rng.permutation(self.samples)
            for i in range(0, self.samples - self.batch + 1, self.batch):
                if skip:
                    skip -= 1
                    continue
                yield order[i:i + self.batch]

    def after(self, steps: int) -> "_EpochBatches":
        return _EpochBatches(self.samples, self.epochs, self.batch, self.seed, self.skip + steps)
