"""The audit and sweep pages of the demo and of ResNet-18 (CIFAR, seeded random weights),
opened in headless Chromium: each page's size, its load time (navigation start to the end of
the load event, the median of --rounds loads), its images and console errors, and a
screenshot of its top (the whole-network figure first).

    .venv/bin/python tools/report_pages.py [--out reports-pages] [--readme-shot docs/images/audit-demo.png]

Needs chromium, chromium-driver (apt) and selenium (the test extra). Prints one line per page;
the README's figures come from it.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import wageubn_sim
from wageubn_sim.cli import load_model
from wageubn_sim.demo import DEMO_DATA, images_to_input
from wageubn_sim.models import resnet18
from wageubn_sim.reports.audit import audit
from wageubn_sim.reports.sweep import sweep


def demo_pages(out: Path) -> list:
    model = load_model("wageubn_sim.demo:demo_model", str(DEMO_DATA))
    with np.load(DEMO_DATA) as data:
        x = images_to_input(data["test_images"][:200])
        labels = data["test_labels"][:200]
    graph = wageubn_sim.compile(model, x[:32])
    report = audit(graph, x)
    swept, _ = sweep(graph, (x, labels), "accuracy:0.01")
    return [("demo audit", _write(out / "demo-audit.html", report.to_html())),
            ("demo sweep (accuracy:0.01)", _write(out / "demo-sweep.html", swept.to_html()))]


def resnet_pages(out: Path, images: int) -> list:
    import torch
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((images, 3, 32, 32))
    graph = wageubn_sim.compile(wageubn_sim.quantize_model(resnet18(10, True)).eval(), x[:4])
    report = audit(graph, x)
    swept, _ = sweep(graph, x, "top1:0.9", registers=("accumulator",))
    return [(f"ResNet-18 audit ({images} images)", _write(out / "resnet18-audit.html", report.to_html())),
            (f"ResNet-18 sweep (top1:0.9, accumulators, {images} images)",
             _write(out / "resnet18-sweep.html", swept.to_html()))]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def measure(driver, path: Path, rounds: int, shot: Path) -> dict:
    """Load the page ``rounds`` times; the median load time, its images and errors, and a
    screenshot of the window (the page's top)."""
    seconds = []
    for _ in range(rounds):
        driver.get("about:blank")
        driver.get(path.resolve().as_uri())
        timing = driver.execute_script(
            "const t = performance.getEntriesByType('navigation')[0]; return [t.startTime, t.loadEventEnd]")
        seconds.append((timing[1] - timing[0]) / 1000)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.alt !== ''])")
    driver.save_screenshot(str(shot))
    return {"bytes": path.stat().st_size, "load_s": statistics.median(seconds),
            "images": len(images), "decoded": sum(ok for ok, _ in images),
            "described": sum(alt for _, alt in images), "errors": len(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="report-pages", help="Folder for the pages and screenshots.")
    parser.add_argument("--resnet-images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="Loads per page (the median is printed).")
    parser.add_argument("--readme-shot", help="Also copy the demo audit's screenshot here.")
    args = parser.parse_args()
    wageubn_sim.keep_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pages = demo_pages(out) + resnet_pages(out, args.resnet_images)
    print(f"pages written in {time.perf_counter() - start:.0f} s")
    driver = browser()
    try:
        for label, path in pages:
            shot = path.with_suffix(".png")
            m = measure(driver, path, args.rounds, shot)
            print(f"{label}: {m['bytes'] / 1e6:.2f} MB, loads in {m['load_s']:.2f} s (median of "
                  f"{args.rounds}, headless Chromium), {m['decoded']}/{m['images']} images decoded, "
                  f"{m['described']} with alt text, {m['errors']} console errors; screenshot {shot}")
    finally:
        driver.quit()
    if args.readme_shot:
        Path(args.readme_shot).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "demo-audit.png", args.readme_shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
