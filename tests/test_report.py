"""`adapdate eval --html`: choosing the pictures, the page, the folder, and the page in a real Chromium."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from adapdate_codec import evaluate, metrics, report
from adapdate_codec.errors import OutputError, OutputExistsError
from adapdate_codec.evaluate import Row, Window
from adapdate_codec.fileio import staged_folder

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # ignored by git; CI may upload it


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([x / w * 200, y / h * 200, (x + y) / (w + h) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def row(codec: str, setting: float, nbytes: int, image: str = "a.png") -> Row:
    return Row(image, codec, float(setting), 64, 48, nbytes, nbytes * 8 / (64 * 48), 30.0, math.nan, math.nan,
               0.01, 0.01, 0.0, 0.0)


# --- choosing what the viewer shows ------------------------------------------------------------------


def test_nearest_file_size_per_subject_setting() -> None:
    rows = [row("adapdate", 1, 1000), row("adapdate", 3, 3000),
            row("jpeg", 10, 900), row("jpeg", 30, 2000), row("jpeg", 60, 4200),
            row("webp", 20, 1100), row("webp", 50, 2900)]
    sel = report.select(rows, ["adapdate"])
    assert [report.row_key(r) for r in sel.subjects] == ["adapdate|1", "adapdate|3"]
    assert {c: report.row_key(r) for c, r in sel.nearest["adapdate|1"].items()} == {
        "adapdate": "adapdate|1", "jpeg": "jpeg|10", "webp": "webp|20"}
    assert report.row_key(sel.nearest["adapdate|3"]["jpeg"]) == "jpeg|30"  # |2000-3000| < |4200-3000|
    assert report.row_key(sel.nearest["adapdate|3"]["webp"]) == "webp|50"
    assert {report.row_key(r) for r in sel.rows()} == {"adapdate|1", "adapdate|3", "jpeg|10", "jpeg|30",
                                                       "webp|20", "webp|50"}  # jpeg q60 is never shown
    assert report.nearest_by_bytes(1500, [row("x", 1, 1000), row("x", 2, 2000)]).bytes == 1000  # tie: smaller


def test_adapdate_variants_are_subjects_and_the_first_codec_stands_in() -> None:
    assert report.subject_codecs(["jpeg", "adapdate:e0", "webp", "adapdate:e5"]) == ["adapdate:e0", "adapdate:e5"]
    assert report.subject_codecs(["jpeg", "webp"]) == ["jpeg"]
    assert not report.is_subject("adapdatex")
    rows = [row("adapdate:e0", 3, 1000), row("adapdate:e5", 3, 900), row("jpeg", 10, 950)]
    sel = report.select(rows, ["adapdate:e0", "adapdate:e5"])
    assert report.row_key(sel.nearest["adapdate:e0|3"]["adapdate:e5"]) == "adapdate:e5|3"  # before / after


def test_window_keeps_a_centred_crop() -> None:
    w = Window(100, 50)
    assert w.box(40, 60) == (0, 0, 60, 40)
    assert w.box(200, 300) == (100, 75, 100, 50)
    assert w.crop(np.zeros((200, 300, 3), np.uint8)).shape == (50, 100, 3)


def test_nice_ticks_and_chart_points() -> None:
    assert report.nice_ticks(0, 1.3) == [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert report.nice_ticks(26.3, 35.9)[0] <= 26.3 and report.nice_ticks(26.3, 35.9)[-1] >= 35.9
    s = report.Series("a<b", "#000", (report.Point(0.1, 25, "a q1"), report.Point(0.5, 30, "a q2"),
                                      report.Point(0.9, math.nan, "skipped")))
    svg = report.svg_chart([s], "bpp", "dB", "t")
    assert svg.count("<circle") == 2 and "<title>a q1</title>" in svg and 'data-name="a&lt;b"' in svg
    assert report.svg_chart([], "bpp", "dB", "t") == ""


def test_run_hands_back_the_same_crops_in_worker_processes(tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(textured(40, 56, 3)).save(folder / "a.png")
    plan = evaluate.plan_codecs(["jpeg"], ["jpeg=30,80"])
    images = evaluate.find_images([folder])
    got: dict[int, list] = {1: [], 2: []}
    for jobs in (1, 2):
        evaluate.run(images, plan.specs, jobs, keep=Window(32, 24), on_decoded=lambda p, d, j=jobs: got[j].extend(d))
    assert [(r.setting, c.shape) for r, c in got[1]] == [(30.0, (24, 32, 3)), (80.0, (24, 32, 3))]
    assert all(np.array_equal(c1, c2) for (_, c1), (_, c2) in zip(got[1], got[2]))
    rows, _ = evaluate.run(images, plan.specs, keep=Window(32, 24))  # no callback: nothing is kept
    assert len(rows) == 2


# --- the folder --------------------------------------------------------------------------------------


def test_staged_folder_appears_whole_or_not_at_all(tmp_path) -> None:
    out = tmp_path / "rep"
    with pytest.raises(RuntimeError):
        with staged_folder(out) as stage:
            (stage / "index.html").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_folder(out) as stage:
        (stage / "index.html").write_text("new")
    assert (out / "index.html").read_text() == "new"
    with pytest.raises(OutputExistsError):
        with staged_folder(out) as stage:
            pass
    with staged_folder(out, force=True) as stage:
        (stage / "index.html").write_text("newer")
    assert (out / "index.html").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_force_replaces_only_a_report(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.jpg").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        report.check_output(photos, force=False)
    with pytest.raises(OutputError, match="refusing"):
        report.check_output(photos, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        report.check_output(tmp_path / "file", force=True)
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text(f'<!DOCTYPE html><meta name="generator" content="{report.GENERATOR}">')
    report.check_output(old, force=True)  # a report: may be replaced
    report.check_output(tmp_path / "new", force=False)


# --- the report from a real run ----------------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(textured(176, 192, 1)).save(folder / "a.png")  # >= 161 px: MS-SSIM defined
    Image.fromarray(textured(192, 176, 2)).save(folder / "b <&>.png")  # a name the page must escape
    return folder


def build(folder: Path, out: Path, codecs: list[str], quality: list[str], max_mb: float = 100.0,
          window: Window = report.DEFAULT_WINDOW) -> tuple[report.ReportBuilder, evaluate.Evaluation]:
    plan = evaluate.plan_codecs(codecs, quality)
    images = evaluate.find_images([folder])
    out.mkdir()
    builder = report.ReportBuilder(out, images, [s.name for s in plan.specs],
                                   {c.name: c.setting_name for c in plan.codecs}, window=window, max_mb=max_mb)
    rows, notes = evaluate.run(images, plan.specs, keep=builder.keep, on_decoded=builder.add)
    ev = evaluate.finish(images, plan, rows, notes)
    builder.write(ev, "adapdate eval imgs --html out")
    return builder, ev


def test_pictures_are_what_the_codec_decoded(two_images, tmp_path) -> None:
    builder, ev = build(two_images, tmp_path / "out", ["jpeg", "webp"], ["jpeg=20,60,90", "webp=30,70"])
    assert [v.name for v in builder.views] == ["a.png", "b <&>.png"]
    view = builder.views[0]
    original = np.asarray(Image.open(two_images / "a.png").convert("RGB"))
    for key, shown in view.shown.items():
        stored = np.asarray(Image.open(tmp_path / "out" / shown.src))
        r = next(r for r in ev.rows if r.image == "a.png" and report.row_key(r) == key)
        assert stored.shape == original.shape
        assert metrics.psnr(original, stored) == pytest.approx(r.psnr, abs=1e-9)  # lossless: same pixels
        assert f"{r.bytes:,} bytes" in shown.caption
    assert set(view.subjects) == {"jpeg|20", "jpeg|60", "jpeg|90"}  # no adapdate: the first codec is the subject
    page = (tmp_path / "out" / "index.html").read_text()
    assert "b &lt;&amp;&gt;.png" in page and "b <&>.png" not in page
    assert page.count('<section class="viewer"') == 2
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1])
    assert set(data["images"]["0"]["nearest"]["jpeg|60"]) == {"jpeg", "webp"}
    assert "<table class=\"bd\"" in page or "No BD figures" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch


def test_size_limit_leaves_images_out_and_says_so(two_images, tmp_path) -> None:
    builder, _ = build(two_images, tmp_path / "out", ["jpeg", "webp"], ["40"], max_mb=0.01)
    assert [v.name for v in builder.views] == ["a.png"] and builder.omitted == ["b <&>.png"]
    assert not (tmp_path / "out" / "img" / "001").exists()
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Viewers for 1 of 2 images" in page and "--html-max-mb" in page


def test_large_images_are_cropped_and_the_page_says_so(two_images, tmp_path) -> None:
    builder, _ = build(two_images, tmp_path / "out", ["jpeg", "webp"], ["40"], window=Window(96, 80))
    stored = Image.open(tmp_path / "out" / builder.views[0].original.src)
    assert stored.size == (96, 80)
    assert "centre crop" in (tmp_path / "out" / "index.html").read_text()


def test_cli_html(two_images, tmp_path) -> None:
    from adapdate_codec.cli import main

    out = tmp_path / "rep"
    args = ["eval", str(two_images), "-c", "jpeg", "-c", "webp", "-q", "30,70", "--html", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and len(list((out / "img").rglob("*.png"))) >= 2 * 3
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.output
    assert CliRunner().invoke(main, [*args, "-f"]).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep.")]  # no staging left behind


# --- in a real browser -------------------------------------------------------------------------------


def _chromium():
    """A headless Chromium through selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait(driver, script: str, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def _stage_pixels(stage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(stage.screenshot_as_png)).convert("RGB")).astype(np.int16)


def test_report_in_headless_chromium(request, monkeypatch, two_images, tmp_path) -> None:
    """2 images, 3 codecs (adapdate with the tiny model, JPEG, WebP), checked from the rendered page."""
    driver = _chromium()
    try:
        monkeypatch.setenv("ADAPDATE_HOME", str(request.getfixturevalue("tiny_store")))
        from adapdate_codec.baselines import CodecOptions

        plan = evaluate.plan_codecs(["adapdate", "jpeg", "webp"], ["jpeg=10,50,90", "webp=10,50,90"],
                                    CodecOptions(model="tiny"))
        assert [s.name for s in plan.specs] == ["adapdate", "jpeg", "webp"], plan.notes
        images = evaluate.find_images([two_images])
        out = tmp_path / "report"
        with staged_folder(out) as stage:
            builder = report.ReportBuilder(stage, images, [s.name for s in plan.specs],
                                           {c.name: c.setting_name for c in plan.codecs})
            rows, notes = evaluate.run(images, plan.specs, keep=builder.keep, on_decoded=builder.add)
            builder.write(evaluate.finish(images, plan, rows, notes))

        driver.get((out / "index.html").as_uri())
        # the curves are drawn: one path and one point per setting for each codec, with a real size
        charts = driver.execute_script("""return [...document.querySelectorAll('.chart svg')].map(s => {
            const r = s.getBoundingClientRect();
            return [r.width, r.height, s.querySelectorAll('.series path').length, s.querySelectorAll('circle').length];
        })""")
        assert len(charts) == 2  # PSNR and MS-SSIM
        for width, height, paths, circles in charts:
            assert width > 200 and height > 100 and paths == 3 and circles == 1 + 3 + 3

        viewer = driver.find_element("css selector", "#image-0")
        driver.execute_script("arguments[0].scrollIntoView()", viewer)
        sizes = _wait(driver, """const v = document.querySelector('#image-0');
            const im = [...v.querySelectorAll('.stage img')];
            return im.every(i => i.complete && i.naturalWidth) && im.map(i => [i.className, i.naturalWidth, i.naturalHeight]);""")
        assert sizes == [["a", 192, 176], ["b", 192, 176]]
        left = viewer.find_element("css selector", "select.left").get_attribute("value")
        right = viewer.find_element("css selector", "select.right").get_attribute("value")
        assert (left, right) == ("adapdate|3", "jpeg")

        # the slider, by keyboard: End shows only the left image, Home only the right one
        stage = viewer.find_element("css selector", ".stage")
        srcs = driver.execute_script("return [...arguments[0].querySelectorAll('img')].map(i => i.src)", stage)
        a, b = (np.asarray(Image.open(Path(unquote(urlparse(s).path))).convert("RGB")).astype(np.int16)
                for s in srcs)
        assert np.abs(a - b).mean() > 5  # the two pictures differ, so the screenshots can tell them apart
        split = viewer.find_element("css selector", "input.split")
        from selenium.webdriver.common.keys import Keys

        split.send_keys(Keys.END)
        assert split.get_attribute("value") == "100"
        only_left = _stage_pixels(stage)
        split.send_keys(Keys.HOME)
        assert split.get_attribute("value") == "0"
        only_right = _stage_pixels(stage)
        assert only_left.shape == a.shape  # fit at scale 1: one screen pixel per image pixel
        inner = (slice(40, -10), slice(10, -10))  # clear of the name tags and of the divider at an edge
        assert np.abs(only_left - a)[inner].mean() < 2 and np.abs(only_left - b)[inner].mean() > 5
        assert np.abs(only_right - b)[inner].mean() < 2 and np.abs(only_right - a)[inner].mean() > 5

        # zoom 2:1, the crop follows the mouse
        from selenium.webdriver.common.action_chains import ActionChains

        viewer.find_element("css selector", '.zoom button[data-zoom="2"]').click()
        ActionChains(driver).move_to_element_with_offset(stage, 60, 50).perform()
        t1 = driver.execute_script("return arguments[0].querySelector('img.a').style.transform", stage)
        ActionChains(driver).move_to_element_with_offset(stage, -60, -50).perform()
        t2 = driver.execute_script("return arguments[0].querySelector('img.a').style.transform", stage)
        assert "scale(2)" in t1 and t1 != t2
        split.send_keys(Keys.PAGE_UP)  # back to a split view for the screenshot
        viewer.find_element("css selector", '.zoom button[data-zoom="0"]').click()

        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        driver.set_window_size(1200, 2200)
        driver.execute_script("window.scrollTo(0, 0)")
        for path in (tmp_path / "report.png", ARTIFACTS / "html-report.png"):
            assert driver.save_screenshot(str(path))
        assert Image.open(tmp_path / "report.png").size[0] >= 1000
    finally:
        driver.quit()
