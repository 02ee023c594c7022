#!/usr/bin/env python3
"""Check the built site in headless Chromium: every page of the table of contents loads, its
figures are there, and its math is typeset by the MathJax the site serves itself.

    python scripts/check_site.py _build/smoke/html

The site is served on localhost, and Chromium (Debian's package ``chromium``) loads each
page, runs its scripts and hands back the resulting DOM. For each page:
- it has a title (``<h1>``);
- every figure it shows (``_images/...``) exists and decodes, and each chapter has one;
- every math element Sphinx wrote became a MathJax ``<mjx-container>``, none is a MathJax
  error, and MathJax came from the site, not from a CDN;
- each chapter opens with its banner (profile, device, data, seed) and ends with its box
  *What this run shows*;
- no code cell scrolls sideways in a 1,280-pixel-wide window: a script that the local
  server adds to each page measures every code cell after the page has loaded;
- the page of pipeline diagrams shows every diagram of ``book/figures/``.

Without Chromium, the script installs it with apt-get when it runs as root. Otherwise it
skips with a message, except under ``CI=true``, where the check must run and its absence is
an error.
"""
from __future__ import annotations

import argparse
import functools
import html
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ["chromium", "chromium-browser", "google-chrome"]
# Without the networking flags Chromium keeps calling Google's hosts, which this kind of
# machine refuses; --virtual-time-budget lets the page's scripts (MathJax) finish first.
WINDOW_WIDTH = 1280
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={WINDOW_WIDTH},900", "--hide-scrollbars",
         "--virtual-time-budget=20000", "--dump-dom"]
MATH_IN_SOURCE = re.compile(r'class="math[ "]')
IMAGE_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*_images/[^"?]+)')
SCRIPT_SRC = re.compile(r'<script[^>]*\ssrc="([^"]+)"')
BANNER, CLAIMS = "rmd-banner", "rmd-claims"  # the classes of Run's two boxes
BADGE = "colab-badge.svg"  # the vendored badge is not one of a chapter's figures
PIPELINES_PAGE = "book/pipelines.html"
DIAGRAMS = ROOT / "book" / "figures"
# Added by the local server to every page: after the page has loaded, write the code cells
# that are wider than their box (they would scroll sideways) into the DOM.
MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const wide = [];
  document.querySelectorAll(".cell_input pre").forEach((el) => {
    if (el.scrollWidth > el.clientWidth + 1) {
      const line = el.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), "");
      wide.push(`${el.scrollWidth - el.clientWidth}px: ${line.trim().slice(0, 60)}`);
    }
  });
  const out = document.createElement("pre");
  out.id = "rmd-site-check";
  out.dataset.cells = document.querySelectorAll(".cell_input pre").length;
  out.textContent = wide.join("\\n");
  document.body.appendChild(out);
}, 500));
</script>"""
MEASURED = re.compile(r'<pre id="rmd-site-check" data-cells="(\d+)">(.*?)</pre>', re.DOTALL)
LOAD_TRIES = 3  # loads of one page before a missing measurement counts against it


@dataclass
class PageReport:
    page: str
    figures: int = 0
    math_expected: int = 0
    math_typeset: int = 0
    code_cells: int = 0
    loads: int = 1
    problems: list[str] = field(default_factory=list)


def toc_pages(toc_path: Path) -> list[str]:
    """The pages of ``_toc.yml`` as paths relative to the site root, e.g. ``notebooks/x.html``."""
    toc = yaml.safe_load(toc_path.read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [entry["file"] for entry in part.get("chapters", [])]
    return [p + ".html" for p in pages]


def inspect_page(page: str, source_html: str, dom: str, site: Path) -> PageReport:
    """Compare the page's static HTML with the DOM Chromium produced from it."""
    report = PageReport(page)
    if "<h1" not in dom:
        report.problems.append("no <h1> title in the loaded page")
    images = IMAGE_SRC.findall(dom)
    report.figures = sum(not src.endswith(BADGE) for src in images)
    chapter = page.startswith("notebooks/")
    if chapter and not report.figures:
        report.problems.append("a chapter without any figure")
    for src in images:
        problem = _image_problem((site / page).parent / src)
        if problem:
            report.problems.append(f"figure {src} does not load: {problem}")
    if chapter:
        for cls, what in ((BANNER, "no banner (run.banner()) at its top"),
                          (CLAIMS, "no box 'What this run shows' (run.report_claims())")):
            if not re.search(rf'class="[^"]*\b{cls}\b', dom):
                report.problems.append(what)
    if page == PIPELINES_PAGE:
        shown = {Path(src).name for src in images}
        missing = sorted(p.name for p in DIAGRAMS.glob("pipeline_*.svg") if p.name not in shown)
        if missing:
            report.problems.append(f"diagrams not shown: {', '.join(missing)}")
    measured = MEASURED.search(dom)
    if measured is None:
        report.problems.append("the code-width measurement did not run")
    else:
        report.code_cells = int(measured.group(1))
        wide = [line for line in measured.group(2).splitlines() if line.strip()]
        if wide:
            report.problems.append(
                f"{len(wide)} code cell(s) scroll sideways at {WINDOW_WIDTH} px, e.g. "
                f"{html.unescape(wide[0])}")
    report.math_expected = len(MATH_IN_SOURCE.findall(source_html))
    report.math_typeset = dom.count("<mjx-container")
    if report.math_expected:
        if report.math_typeset < report.math_expected:
            report.problems.append(f"{report.math_expected} math elements but only "
                                   f"{report.math_typeset} typeset by MathJax")
        if "<mjx-merror" in dom:
            report.problems.append("MathJax reports an error in a formula")
        remote = [s for s in SCRIPT_SRC.findall(source_html)
                  if "mathjax" in s.lower() and re.match(r"(https?:)?//", s)]
        if remote:
            report.problems.append(f"MathJax is loaded from {remote[0]}, not from the site")
    return report


def _image_problem(path: Path) -> str | None:
    """Why the image at ``path`` does not load, or None. SVG is parsed as XML."""
    try:
        if path.suffix == ".svg":
            root = ET.parse(path).getroot()
            if not root.tag.endswith("svg"):
                return f"its root element is {root.tag}, not svg"
            return None
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, ET.ParseError) as exc:
        return str(exc)
    return None


def find_chromium() -> str | None:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def install_chromium() -> str | None:
    """apt-get install chromium, as root; None when that is not possible here."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    print("site check: installing Debian's chromium", flush=True)
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env)
        subprocess.run(cmd, env=env)
    return find_chromium()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site; an HTML page gets the measuring script before its ``</body>``."""

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = with_measurement(path.read_bytes())
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def with_measurement(page: bytes) -> bytes:
    """The page with :data:`MEASURE` added at the end of its body."""
    script = MEASURE.encode()
    at = page.rfind(b"</body>")
    return page[:at] + script + page[at:] if at >= 0 else page + script


def serve(site: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def load_dom(browser: str, url: str, profile_dir: str) -> str:
    out = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile_dir}", url],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"chromium exited with {out.returncode}: {out.stderr[-500:]}")
    return out.stdout


def load_measured_dom(browser: str, url: str, profile_dir: str,
                      tries: int = LOAD_TRIES) -> tuple[str, int]:
    """The page's DOM once the measuring script has run in it, and how many loads that took.

    Headless Chromium now and then dumps the DOM before virtual time reaches the page's
    ``load`` event (seen once in CI, on a page with no script of its own). That says nothing
    about the page, so the page is loaded again, each time with a fresh browser profile. After
    ``tries`` loads without the measurement, the last DOM is returned and the page fails.
    """
    dom = ""
    for attempt in range(1, tries + 1):
        profile = profile_dir if attempt == 1 else tempfile.mkdtemp(dir=profile_dir)
        dom = load_dom(browser, url, profile)
        if MEASURED.search(dom):
            return dom, attempt
    return dom, tries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="the built HTML, e.g. _build/smoke/html")
    ap.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    args = ap.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").exists():
        sys.exit(f"error: {site} has no index.html; build the book first (make book)")

    in_ci = os.environ.get("CI", "").lower() == "true"
    browser = find_chromium() or install_chromium()
    if browser is None:
        msg = ("no Chromium here, and it cannot be installed without root: install Debian's "
               "chromium package (sudo apt-get install chromium) to check the site")
        if in_ci:
            sys.exit(f"error: site check: {msg}. CI=true requires this check.")
        print(f"site check SKIPPED: {msg}.")
        return 0

    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    reports = []
    try:
        with tempfile.TemporaryDirectory() as profile_dir:
            for page in toc_pages(args.toc):
                path = site / page
                if not path.exists():
                    reports.append(PageReport(page, problems=["page missing from the site"]))
                    continue
                try:
                    dom, loads = load_measured_dom(browser, base + page, profile_dir)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    reports.append(PageReport(page, problems=[f"did not load: {exc}"]))
                    continue
                report = inspect_page(page, path.read_text(encoding="utf-8"), dom, site)
                report.loads = loads
                reports.append(report)
    finally:
        server.shutdown()

    print(f"site check with {browser}:")
    print(f"{'page':48} {'figures':>7} {'math typeset':>14} {'code cells':>10}  status")
    for r in reports:
        status = "ok" if not r.problems else "; ".join(r.problems)
        print(f"{r.page:48} {r.figures:>7} {r.math_typeset:>6}/{r.math_expected:<7} "
              f"{r.code_cells:>10}  {status}")
    reloaded = [f"{r.page} ({r.loads} loads)" for r in reports if r.loads > 1]
    if reloaded:
        print("loaded again because the browser dumped the page before its load event: "
              + ", ".join(reloaded))
    failed = [r for r in reports if r.problems]
    if failed:
        print(f"error: {len(failed)} of {len(reports)} pages failed the site check",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
