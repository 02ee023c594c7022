"""The three explorers in a real browser: Voilà serves a notebook that shows them, headless
Chromium (the system's, driven by Playwright) moves each one's first slider, and the image
and text it then shows must be the ones the Python side computes for that position.

Needs voila and playwright (the ``test`` extra) and Debian's Chromium, found and, as root,
installed as the site check does (``scripts/check_site.py``), or ``$RMD_CHROMIUM``; nothing
downloads a browser build. Without them the test is skipped, and under ``CI=true`` it
fails. ``$RMD_KERNEL_PYTHON`` is the Python that runs the notebook (default: this one).
It takes about 80 s on 2 busy CPU cores, most of it Voilà starting and the kernel
computing the three explorers.
"""
from __future__ import annotations

import base64
import html
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
VOILA = Path(sys.executable).with_name("voila")
LAB_ONLY = ["jupyterlab-jupytext", "@voila-dashboards/jupyterlab-preview"]
KERNEL_PYTHON = os.environ.get("RMD_KERNEL_PYTHON", sys.executable)
TITLES = ("latent walk", "attack explorer", "pair explorer")


def find_chromium() -> str | None:
    """$RMD_CHROMIUM, else the site check's search (and, as root, its apt-get install)."""
    if os.environ.get("RMD_CHROMIUM"):
        return os.environ["RMD_CHROMIUM"]
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "scripts" / "check_site.py")
    site = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_site", site)  # its dataclasses look their module up there
    spec.loader.exec_module(site)
    return site.find_chromium() or site.install_chromium()


def missing() -> tuple[str | None, str | None]:
    """(what is missing, or None; the Chromium to use)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')", None
    if not VOILA.exists():
        return f"voila is not installed next to {sys.executable} (pip install -e '.[test]')", None
    browser = find_chromium()
    if not browser:
        return "no Chromium (sudo apt-get install chromium, or set RMD_CHROMIUM)", None
    return None, browser


WHY, CHROMIUM = missing()
if WHY:
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError(f"the browser test must run under CI=true: {WHY}")
    pytest.skip(WHY, allow_module_level=True)

NOTEBOOK = r'''
import json, os
import matplotlib
matplotlib.use("Agg")
import torch
from conftest import LinearGenerator, TINY_SHAPE, make_tiny_net
from rmd_lib.attacks import minmax_pairs
from rmd_lib.projection import InvertAndClassify
from rmd_course.explorers import (attack_explorer, attack_sweep, latent_grid, latent_walk,
                                  pair_explorer, pair_paths)

G, net = LinearGenerator(), make_tiny_net()
g = torch.Generator().manual_seed(123)
x, y = torch.rand(8, *TINY_SHAPE, generator=g), torch.randint(0, 3, (8,), generator=g)
inc = InvertAndClassify(G, net, seed=0, steps=6, restarts=2)
pairs = minmax_pairs(G, net, eps=2.0, n=8, steps=15, lr=0.2, seed=0)
explorers = {
    "latent walk": latent_walk(latent_grid(G, net, n=5), title="latent walk"),
    "attack explorer": attack_explorer(attack_sweep(inc, x[:4], y[:4], (0.0, 0.05, 0.1),
                                                    attack="fgsm", seed=3),
                                       title="attack explorer"),
    "pair explorer": pair_explorer(pair_paths(G, net, pairs, n_path=5, eps=2.0),
                                   title="pair explorer"),
}


def shown(view):
    return {"png": bytes(view.image.value).hex(), "text": view.text.value}


expected = {}
for name, ui in explorers.items():
    view = ui.explorer
    first = next(iter(view.controls.values()))
    before = shown(view)
    # One step right, as the arrow key moves the slider in the browser.
    if hasattr(first, "index"):
        first.index += 1
    else:
        first.value += 1
    expected[name] = {"before": before, "after": shown(view)}
    if hasattr(first, "index"):
        first.index -= 1
    else:
        first.value -= 1
    assert shown(view) == before
with open(os.environ["RMD_EXPECTED"], "w") as fh:
    json.dump(expected, fh)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain(text: str) -> str:
    """HTML as the text a reader sees: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Voilà serving the explorers' notebook; yields (url, path of the expected values)."""
    tmp = tmp_path_factory.mktemp("voila")
    kernels = tmp / "jupyter" / "kernels" / "rmd-browser-test"
    kernels.mkdir(parents=True)
    expected = tmp / "expected.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               RMD_EXPECTED=str(expected), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [KERNEL_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rmd browser test", "language": "python", "env": {
            k: env[k] for k in ("PYTHONPATH", "RMD_EXPECTED", "OMP_NUM_THREADS", "MPLBACKEND")}}))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "rmd-browser-test", "display_name": "rmd browser test", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK)] + [
        nbformat.v4.new_code_cell(f"explorers[{t!r}]") for t in TITLES]
    nbformat.write(nb, tmp / "explorers.ipynb")
    port = free_port()
    env["JUPYTER_PATH"] = os.pathsep.join([str(tmp / "jupyter"), env.get("JUPYTER_PATH", "")])
    log = (tmp / "voila.log").open("w")
    proc = subprocess.Popen([str(VOILA), "explorers.ipynb", "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--show_tracebacks=True",
                             # JupyterLab's own extensions installed beside Voila (jupytext's
                             # menu, Voila's preview button) need JupyterLab's shared modules,
                             # which Voila's page does not provide: they fail in the console.
                             f"--VoilaConfiguration.extension_denylist={LAB_ONLY!r}"],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):  # up to a minute for the server to answer
            try:
                urllib.request.urlopen(url + "api", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited: {(tmp / 'voila.log').read_text()[-3000:]}")
        yield url, expected, tmp / "voila.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_each_explorer_follows_its_slider_in_chromium(served):
    from playwright.sync_api import sync_playwright

    url, expected_file, voila_log = served
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        failed = []  # resources that did not load: (url, reason)
        page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
        # Voilà's page asks a CDN for Font Awesome's icon styles; the test runs offline, so
        # every request off this machine gets an empty answer instead of a network error.
        outside = []

        def offline(route):
            if route.request.url.startswith(url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.fulfill(status=200, body="")

        page.route("**/*", offline)
        started = time.monotonic()
        page.goto(url, timeout=300_000)
        # Voilà shows the page once every cell ran; the widgets render after that.
        page.wait_for_selector(".widget-vbox img", timeout=300_000)
        expected = json.loads(expected_file.read_text())

        def box(title):
            return page.locator(".widget-vbox").filter(
                has=page.locator(f"b:text-is('{title}')")).last

        def shown(title):
            b = box(title)
            src = b.locator("img").first.get_attribute("src")
            png = page.evaluate("""async src => {
                const bytes = new Uint8Array(await (await fetch(src)).arrayBuffer());
                return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join("");
            }""", src)
            text = b.locator(".widget-html-content").last.inner_text()
            return png, " ".join(text.split())

        for title in TITLES:
            want = expected[title]
            png, text = shown(title)
            assert png == want["before"]["png"], f"{title}: the first image is not the Python side's"
            assert text == plain(want["before"]["text"]), (title, text)
            handle = box(title).locator(".noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowRight")
            deadline = time.monotonic() + 60
            while shown(title)[0] == png and time.monotonic() < deadline:
                time.sleep(0.2)
            png, text = shown(title)
            assert png == want["after"]["png"], f"{title}: after the slider moved, another image"
            assert text == plain(want["after"]["text"]), (title, text)
            assert want["after"]["png"] != want["before"]["png"], f"{title}: the step changed nothing"
        browser.close()
    print(f"browser check: {time.monotonic() - started:.1f} s after the page was requested")
    print(f"answered empty, off this machine: {outside}")
    assert all("fontawesome" in u for u in outside), outside
    # The server's own 404 for a favicon is not the page's error.
    errors = [e for e in errors if "favicon" not in e]
    assert not errors and not failed, (errors, failed)
