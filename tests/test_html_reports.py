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
    """The demo's audit page on inputs scaled far beyond its s16.8 input (so the input row
    saturates and the page warns), and its sweep page for an accuracy criterion."""
    root = tmp_path_factory.mktemp("pages")
    from wageubn_sim.cli import load_model
    model = load_model("wageubn_sim.demo:demo_model", str(DEMO_DATA))
    with np.load(DEMO_DATA) as data:
        x = images_to_input(data["test_images"][:24])
        labels = data["test_labels"][:24]
    graph = wageubn_sim.compile(model, x)
    report = audit(graph, x * 1000)
    (root / "audit.html").write_text(report.to_html())
    swept, _ = sweep(graph, (x, labels), "accuracy:0.1", registers=("accumulator",))
    (root / "sweep.html").write_text(swept.to_html())
    return root, report, swept


def _load(browser, path):
    """Open the page; no console error, every image decoded and described."""
    browser.get(path.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    assert images and all(done and w > 0 and h > 0 and alt for done, w, h, alt in images)
    return images


def _links(browser, selector):
    """The targets of the links matched by ``selector``, each checked to exist on the page."""
    targets = browser.execute_script(
        f"return Array.from(document.querySelectorAll({selector!r})).map(a => a.getAttribute('href'))")
    missing = [t for t in targets if not browser.execute_script(
        "return document.getElementById(arguments[0]) !== null", t.lstrip("#"))]
    assert missing == []
    return targets


def test_the_audit_page_shows_the_whole_network_first(browser, pages):
    root, report, _ = pages
    images = _load(browser, root / "audit.html")
    tensors = len(report.histograms)
    assert len(images) == 1 + tensors  # the whole network, then a histogram per register
    first = browser.execute_script(
        "const h = document.querySelector('h2'); const i = document.images[0];"
        "return [h.textContent, i.useMap, h.compareDocumentPosition(i) & 4,"
        " i.compareDocumentPosition(document.querySelector('table')) & 4]")
    assert first == ["The whole network", "#network", 4, 4]  # heading, image, then the table
    # each register's line in the figure and its row in the table link to its histogram
    assert len(_links(browser, "map[name=network] area")) == tensors
    assert len(_links(browser, "table a")) == tensors
    assert browser.execute_script("return document.querySelectorAll('details').length") == tensors
    body_rows = browser.execute_script("return document.querySelectorAll('table tr').length") - 1
    assert body_rows == len(report.rows)
    warning = browser.execute_script("return document.querySelector('.warning').textContent")
    assert "saturates" in warning and "s16.8" in warning


def test_the_sweep_page_speaks_in_its_criterions_terms(browser, pages):
    root, _, swept = pages
    images = _load(browser, root / "sweep.html")
    registers = len(swept.registers)
    # the summary, the proposals tried, then a plot per register
    assert len(images) == 2 + registers
    assert "chosen" in images[0][3] and "accuracy" in images[1][3]
    assert all("accuracy" in alt for *_, alt in images[2:])
    assert len(_links(browser, "map[name=registers] area")) == registers
    body_rows = browser.execute_script("return document.querySelectorAll('table tr').length") - 1
    assert body_rows == registers
