"""The audit's and the sweep's HTML pages in a real browser: Debian's chromium, headless,
driven by selenium through chromium-driver. The page loads with no console error, every
image decodes, the table has a row per tensor (per register for the sweep).

Skipped where chromium, chromium-driver or selenium is missing, unless
WAGEUBN_REQUIRE_BROWSER=1 (CI sets it, and .ci/run installs them)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import wageubn_sim
from wageubn_sim.demo import DEMO_DATA, images_to_input
from wageubn_sim.reports.audit import audit
from wageubn_sim.reports.sweep import sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not CHROMIUM or not DRIVER:
        if os.environ.get("WAGEUBN_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium, chromium-driver and selenium are required here (apt-get install "
                        "chromium chromium-driver; the test extra has selenium)")
        pytest.skip("no chromium, chromium-driver or selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    from wageubn_sim.cli import load_model
    model = load_model("wageubn_sim.demo:demo_model", str(DEMO_DATA))
    with np.load(DEMO_DATA) as data:
        x = images_to_input(data["test_images"][:24])
    graph = wageubn_sim.compile(model, x)
    report = audit(graph, x)
    (root / "audit.html").write_text(report.to_html())
    swept, _ = sweep(graph, x, "exact", registers=("accumulator",))
    (root / "sweep.html").write_text(swept.to_html())
    return root, len(report.rows), len(swept.registers)


def _check(browser, path, rows):
    browser.get(path.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert images and all(done and w > 0 and h > 0 for done, w, h in images)
    body_rows = browser.execute_script("return document.querySelectorAll('table tr').length") - 1
    assert body_rows == rows
    return len(images)


def test_the_audit_page_loads_with_every_histogram(browser, pages):
    root, tensors, _ = pages
    assert _check(browser, root / "audit.html", tensors) == tensors  # a histogram per tensor


def test_the_sweep_page_loads_with_every_plot(browser, pages):
    root, _, registers = pages
    assert _check(browser, root / "sweep.html", registers) == registers  # a plot per register
