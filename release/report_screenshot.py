"""The README's screenshot of an `adapdate eval --html` page, taken in headless Chromium.

    .venv/bin/python release/report_screenshot.py REPORT_DIR docs/eval-html.png [--width 1100] [--colors 192]

Opens REPORT_DIR/index.html (selenium + Debian's chromium and chromium-driver), collapses the per-setting
table, sets the first viewer to a split at 50 % with the right side on the codec given by --right, takes
the page from the top to the end of that viewer, and stores it as a palette PNG (--colors) so that it
stays small enough for the repository (~300 KB).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1100, help="browser window width (CSS px)")
    ap.add_argument("--right", default="webp", help="codec on the right of the first viewer")
    ap.add_argument("--left", help="left setting key of the first viewer, e.g. 'adapdate|3'")
    ap.add_argument("--colors", type=int, default=192, help="palette size of the stored PNG (0: full colour)")
    a = ap.parse_args()

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={a.width},1000",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    try:
        driver.get((a.report / "index.html").resolve().as_uri())
        bottom = driver.execute_script("""
            document.querySelectorAll('details').forEach(d => d.open = false);
            const v = document.querySelector('.viewer');
            const set = (sel, value) => { const s = v.querySelector(sel);
                if (value && [...s.options].some(o => o.value === value)) { s.value = value;
                    s.dispatchEvent(new Event('change')); } };
            set('select.left', arguments[0]);
            set('select.right', arguments[1]);
            v.querySelectorAll('img').forEach(i => i.loading = 'eager');
            return Math.ceil(v.getBoundingClientRect().bottom + window.scrollY + 8);""", a.left, a.right)
        driver.set_window_size(a.width, bottom + 200)
        for _ in range(100):
            if driver.execute_script("return [...document.querySelectorAll('.viewer img')].slice(0, 2)"
                                     ".every(i => i.complete && i.naturalWidth)"):
                break
            time.sleep(0.1)
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
    shot = shot.crop((0, 0, shot.width, min(shot.height, bottom)))
    if a.colors:
        shot = shot.quantize(a.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    shot.save(a.out, optimize=True)
    print(f"{a.out}: {shot.width}x{shot.height}, {a.out.stat().st_size / 1e3:.0f} kB", file=sys.stderr)


if __name__ == "__main__":
    main()
