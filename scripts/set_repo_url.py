#!/usr/bin/env python3
"""Point the book at another GitHub repository.

    python scripts/set_repo_url.py https://github.com/OWNER/REPO

Reads the current URL from ``repository: url:`` in _config.yml and rewrites every
reference to that repository in the project's text files: the config itself, the Colab
badges in notebooks/*.ipynb and their .py twins, the README and the book pages. Three
forms are rewritten: ``github.com/OWNER/REPO``, Colab's
``colab.research.google.com/github/OWNER/REPO`` and the published site,
``https://OWNER.github.io/REPO/``. Standard library only, so it runs
before the virtualenv exists.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
URL = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
CONFIG_URL = re.compile(r"^(\s*url:\s*)(\S+)", re.MULTILINE)
SKIP_DIRS = {".git", ".venv", "_build", "data", "node_modules", "__pycache__"}


def parse(url: str) -> tuple[str, str]:
    m = URL.match(url.strip())
    if not m:
        raise ValueError(f"{url!r} is not of the form https://github.com/OWNER/REPO")
    return m.group(1), m.group(2)


def current_url(root: Path) -> str:
    text = (root / "_config.yml").read_text()
    block = text.split("\nrepository:", 1)
    if len(block) != 2:
        raise ValueError("_config.yml has no 'repository:' section")
    m = CONFIG_URL.search(block[1])
    if not m:
        raise ValueError("_config.yml has no 'url:' under 'repository:'")
    return m.group(2)


def project_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files; a plain walk outside git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, check=True, capture_output=True,
        ).stdout.decode()
        paths = [root / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in root.rglob("*")
                 if not SKIP_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(p for p in paths if p.is_file())


def rewrite(root: Path, new_url: str) -> list[Path]:
    """Replace the current repository by ``new_url`` everywhere; return changed files."""
    old_owner, old_repo = parse(current_url(root))
    new_owner, new_repo = parse(new_url)
    # OWNER/REPO after github.com/ or Colab's /github/, and not the prefix of a longer name.
    pattern = re.compile(
        r"(github\.com/|colab\.research\.google\.com/github/)"
        + re.escape(f"{old_owner}/{old_repo}")
        + r"(?![\w-]|\.(?!git\b)\w)"
    )
    # The published site: https://OWNER.github.io/REPO/ (GitHub Pages).
    pages = re.compile(re.escape(f"https://{old_owner}.github.io/{old_repo}/"))
    changed = []
    for path in project_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new_text = pattern.sub(lambda m: f"{m.group(1)}{new_owner}/{new_repo}", text)
        new_text = pages.sub(f"https://{new_owner}.github.io/{new_repo}/", new_text)
        if new_text != text:
            path.write_text(new_text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        before = current_url(ROOT)
        changed = rewrite(ROOT, argv[0])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"repository URL: {before} -> {current_url(ROOT)}")
    for path in changed:
        print(f"  rewrote {path.relative_to(ROOT)}")
    if not changed:
        print("  nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
