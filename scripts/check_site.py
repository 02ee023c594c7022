#!/usr/bin/env python3
"""Check the built site in headless Chromium: every page of the table of contents loads, its
figures are there, and its math is typeset by the MathJax the site serves itself.

    python scripts/check_site.py _build/smoke/html

The site is served on localhost, and Chromium (Debian's package ``chromium``) loads each
page, runs its scripts and hands back the resulting DOM. For each page:
- it has a title (``<h1>``);
- every figure it shows (``_images/...``) exists and decodes, and each chapter has one;
- every math element Sphinx wrote became a MathJax ``<mjx-container>``, none is a MathJax
  error, and MathJax came from the site, not from a CDN.

Without Chromium, the script installs it with apt-get when it runs as root. Otherwise it
skips with a message, except under ``CI=true``, where the check must run and its absence is
an error.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ["chromium", "chromium-browser", "google-chrome"]
# Without the networking flags Chromium keeps calling Google's hosts, which this kind of
# machine refuses; --virtual-time-budget lets the page's scripts (MathJax) finish first.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000", "--dump-dom"]
MATH_IN_SOURCE = re.compile(r'class="math[ "]')
IMAGE_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*_images/[^"?]+)')
SCRIPT_SRC = re.compile(r'<script[^>]*\ssrc="([^"]+)"')


@dataclass
class PageReport:
    page: str
    figures: int = 0
    math_expected: int = 0
    math_typeset: int = 0
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
    report.figures = len(images)
    if page.startswith("notebooks/") and not images:
        report.problems.append("a chapter without any figure")
    for src in images:
        path = (site / page).parent / src
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, ValueError) as exc:
            report.problems.append(f"figure {src} does not load: {exc}")
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
    def log_message(self, *args):
        pass


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
                    dom = load_dom(browser, base + page, profile_dir)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    reports.append(PageReport(page, problems=[f"did not load: {exc}"]))
                    continue
                reports.append(inspect_page(page, path.read_text(encoding="utf-8"), dom, site))
    finally:
        server.shutdown()

    print(f"site check with {browser}:")
    print(f"{'page':48} {'figures':>7} {'math typeset':>14}  status")
    for r in reports:
        status = "ok" if not r.problems else "; ".join(r.problems)
        print(f"{r.page:48} {r.figures:>7} {r.math_typeset:>6}/{r.math_expected:<7}  {status}")
    failed = [r for r in reports if r.problems]
    if failed:
        print(f"error: {len(failed)} of {len(reports)} pages failed the site check",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
