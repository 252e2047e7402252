"""The HTML report: self-contained, round-trips through its files, and loads in a
real browser (headless Chromium) with every image decoded and a silent console."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from skimage import io as skio

from captum_similarity.cli import explain_images
from captum_similarity.models import SimpleCNN
from captum_similarity.models.loading import LoadedModel
from captum_similarity.report import build_report, load_results, save_results

#: A gallery run with faithfulness curves and four methods takes half a minute here.
pytestmark = pytest.mark.slow

#: Names of the Chromium command in Debian and elsewhere.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Put first in a copy of the report: records load errors and console errors,
#: and at the load event (after every image has loaded or failed) writes the
#: tally into the page, where --dump-dom shows it. An image counts as decoded
#: when it is complete with a natural width (a broken PNG has none and fires
#: an error event).
CHECK = """<script>
window.__problems = [];
window.addEventListener('error', e => window.__problems.push(
  'error: ' + (e.message || (e.target && (e.target.alt || e.target.src || e.target.tagName)))), true);
for (const level of ['error', 'warn']) {
  const original = console[level];
  console[level] = (...args) => { window.__problems.push(level + ': ' + args.join(' ')); original(...args); };
}
window.addEventListener('load', () => {
  const images = [...document.images];
  const failed = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.documentElement.setAttribute('data-check', JSON.stringify({
    images: images.length, failed: failed, problems: window.__problems}));
});
</script>"""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A gallery run of a small CNN on three images, its report and results on disk."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for name in ("query", "a", "b"):
        skio.imsave(
            root / f"{name}.png",
            rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
            check_contrast=False,
        )
    torch.manual_seed(0)
    loaded = LoadedModel(SimpleCNN(), "SimpleCNN", "callable", "a small CNN")
    results = explain_images(
        root / "query.png",
        [root / "a.png", root / "b.png"],
        loaded,
        size=(24, 24),
        methods="gradcam,lrp,pairx,bilrp",
        faithfulness=True,
        progress=False,
    )
    save_results(results, root)
    build_report(results, root / "report.html")
    return root, results


def test_report_is_self_contained_and_every_image_is_a_png(report_dir):
    root, results = report_dir
    page = (root / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing outside the file
    sources = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    assert len(sources) == page.count("<img")
    for alt, data in sources:
        image = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert image.shape[0] > 0 and image.shape[1] > 0, alt
    # what each pair shows
    assert page.count('<h2 id="pair-') == 2
    for expected in (
        "as the model sees it",
        "Maps",
        "PAIR-X",
        "affine",
        "BiLRP",
        "insertion",
        "Ranking",
        "Reproducing this report",
    ):
        assert expected in page, expected
    assert html.escape(results["model"]["layer_choice"]) in page


def test_results_round_trip_through_json_and_npz(report_dir, tmp_path):
    root, results = report_dir
    with_attributes = dict(results, pairs=[dict(results["pairs"][0], attributes={"a figure": b"\x89PNG bytes"})])
    save_results(with_attributes, tmp_path)
    assert load_results(tmp_path)["pairs"][0]["attributes"] == {"a figure": b"\x89PNG bytes"}
    again = load_results(root)
    first = results["pairs"][0]["methods"]["gradcam"]["maps"][0]
    np.testing.assert_array_equal(again["pairs"][0]["methods"]["gradcam"]["maps"][0], first)
    assert again["gallery"] == json.loads(json.dumps(results["gallery"]))
    faith = again["pairs"][0]["methods"]["lrp"]["faithfulness"]["query"]
    assert faith["insertion_curve"].shape == (101,) and 0 <= faith["insertion_auc_normalized"] <= 1
    build_report(again, root / "again.html")  # the report draws from the files alone
    assert (root / "again.html").stat().st_size > 0.9 * (root / "report.html").stat().st_size


def _browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(
        "headless Chromium not found (Debian: apt-get install chromium); "
        "the browser check of the report is skipped"
    )


def test_report_loads_in_a_headless_browser(report_dir, tmp_path):
    browser = _browser()
    root, _ = report_dir
    page = (root / "report.html").read_text(encoding="utf-8")
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK, 1), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=20000",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    run = subprocess.run(
        [browser, *flags, "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r'data-check="([^"]*)"', run.stdout)
    assert found, f"the page did not finish loading:\n{run.stderr[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))
    assert check["images"] == page.count("<img") and check["images"] > 5
    assert check["failed"] == [] and check["problems"] == []
    # the report itself, as a user opens it: nothing reaches the console
    plain = subprocess.run(
        [browser, *flags, "--dump-dom", (root / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Why does the model find these images similar?" in plain.stdout
    assert not [line for line in plain.stderr.splitlines() if ":CONSOLE" in line], plain.stderr
