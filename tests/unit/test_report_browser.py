"""The HTML report in a real headless browser (Debian's Chromium) at 1,280 px: the leaderboard and every figure are
laid out and visible, nothing overflows horizontally, click-to-sort works, and the dark colour scheme applies.

The page is the report of realistic records (``results_data``) with one measuring script appended; Chromium loads
it from disk, the script writes its measurements into the DOM after the load event, and ``--dump-dom`` hands them
back. Skipped where no Chromium is installed (``DIA_RAY_TEST_BROWSER=1 bash scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile

import pytest

from dia_ray.results.report import publish
from results_data import DATASETS, write_benchmark

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine (DIA_RAY_TEST_BROWSER=1 bash "
                                "scripts/setup.sh installs Debian's chromium)")
WIDTH = 1280
FIGURES_PER_DATASET = 4

MEASURE = """
<script>
window.addEventListener("load", function () {
  var width = window.innerWidth, out = {viewport: width, pageWidth: document.documentElement.scrollWidth,
                                        overflowing: [], clipped: [], tables: [], images: []};
  document.querySelectorAll("body *").forEach(function (el) {
    var box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 0.5) {
      out.overflowing.push(el.tagName + "." + el.className + " ends at " + Math.round(box.right) + " px");
    }
    if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0 && getComputedStyle(el).overflowX !== "visible") {
      out.clipped.push(el.tagName + "." + el.className);  // content hidden behind a scrollbar
    }
  });
  document.querySelectorAll("table").forEach(function (t) {
    var box = t.getBoundingClientRect();
    out.tables.push({cls: t.className, rows: t.rows.length, width: box.width, height: box.height, right: box.right});
  });
  document.querySelectorAll("img").forEach(function (img) {
    var box = img.getBoundingClientRect(), style = getComputedStyle(img);
    out.images.push({alt: img.alt, loaded: img.complete && img.naturalWidth > 0, width: box.width,
                     height: box.height, right: box.right,
                     shown: style.display !== "none" && style.visibility === "visible" && style.opacity !== "0"});
  });
  var table = document.querySelector("table.leaderboard"), head = table.tHead.rows[0].cells;
  var titles = Array.prototype.map.call(head, function (c) { return c.textContent.trim(); });
  var col = titles.indexOf("AUROC (last)"), keys = function () {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return parseFloat(r.cells[col].getAttribute("data-sort")); });
  };
  out.before = keys();
  head[col].querySelector("button").click();
  out.ascending = keys();
  head[col].querySelector("button").click();
  out.descending = keys();
  var body = getComputedStyle(document.body);
  out.colors = {background: body.backgroundColor, text: body.color};
  var pre = document.createElement("pre");
  pre.id = "measurements";
  pre.style.display = "none";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def measure(page, dark: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as profile:
        args = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WIDTH},900",
                "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
        if dark:
            args.insert(1, "--force-dark-mode")
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    found = re.search(r'<pre id="measurements"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not report its measurements: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    write_benchmark(root)
    report = publish(root, formats=["html"], figures=False, terminal=False)
    html = (root / "leaderboard" / "report.html").read_text()
    measured = root / "leaderboard" / "report_measured.html"  # beside the report: the same relative links
    measured.write_text(html.replace("</body>", MEASURE + "</body>"))
    return measured, report


def luminance(css: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_table_and_every_figure_are_visible_and_nothing_overflows_at_1280_px(page):
    path, report = page
    got = measure(path)
    assert got["viewport"] == WIDTH
    assert got["pageWidth"] <= WIDTH and got["overflowing"] == [] and got["clipped"] == []
    board = next(t for t in got["tables"] if "leaderboard" in t["cls"])
    assert board["rows"] == len(report.table) + 1 and board["height"] > 100 and board["right"] <= WIDTH
    images = got["images"]
    assert len(images) == FIGURES_PER_DATASET * len(DATASETS) + 2  # + the two ablations
    for image in images:
        assert image["loaded"] and image["shown"], image["alt"]
        assert image["width"] > 250 and image["height"] > 150 and image["right"] <= WIDTH, image
    # click-to-sort: first click ascending, second descending, on the numbers (not the text)
    assert got["ascending"] == sorted(got["before"]) and got["descending"] == sorted(got["before"], reverse=True)
    assert luminance(got["colors"]["background"]) > 0.9 and luminance(got["colors"]["text"]) < 0.3


def test_dark_colour_scheme_is_applied(page):
    got = measure(page[0], dark=True)
    assert luminance(got["colors"]["background"]) < 0.15 and luminance(got["colors"]["text"]) > 0.8
    assert got["overflowing"] == [] and all(image["loaded"] for image in got["images"])
