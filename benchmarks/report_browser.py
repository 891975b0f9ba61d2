"""Render a study's report.html in a real headless browser (Chromium) and save a screenshot.

    python benchmarks/report_browser.py runs/<study> [--out report.png] [--width 1200] [--height 3000]
    python benchmarks/report_browser.py --smoke     # a small made-up study dir, to prove it works

The report must stand alone (images embedded): the page is copied to an empty temp dir and
opened from there, so a link to a file beside it would show as a broken image. The check is
also a test (tests/tune/test_report.py), skipped only where Chromium is not installed
(`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 3000, timeout_s: float = 120) -> Path:
    """Chromium --headless --screenshot of `html` opened alone in an empty dir; returns `out`."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="raykd-report-") as tmp:
        page = Path(tmp) / "report.html"
        shutil.copyfile(html, page)
        out = Path(out).resolve()
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={width},{height}",
               f"--screenshot={out}", page.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if res.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{browser} failed ({res.returncode}): {res.stderr[-2000:]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", nargs="?", type=Path)
    ap.add_argument("--out", type=Path, default=Path("report.png"))
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--smoke", action="store_true", help="a small made-up study dir")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from raykd.report import write_report

    if args.smoke:
        from tests.tune.test_report import make_study

        study = make_study(Path(tempfile.mkdtemp(prefix="raykd-smoke-")))
    elif args.study_dir is None:
        ap.error("STUDY_DIR or --smoke")
    else:
        study = args.study_dir
    html, _ = write_report(study)
    png = screenshot(html, args.out, args.width, args.height)
    print(f"{html} -> {png} ({png.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
