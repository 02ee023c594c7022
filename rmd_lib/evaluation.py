"""Accuracy tables, the chapters' claims, and the results files that the book and tests read."""
from __future__ import annotations

import json
import math
import numbers
import operator
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checks import check_images, check_labels
from .profiles import Profile

__all__ = ["predict", "confidence", "accuracy", "attack_table", "markdown_table", "Run", "start_run",
           "default_results_dir"]


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on x (N, C, H, W) in [0, 1], computed in batches."""
    check_images(x, "x")
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def confidence(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's softmax probability of the true class y, per image: (N,)."""
    probs = predict(model, x, batch_size).softmax(dim=1)
    return probs.gather(1, y.to(probs.device).view(-1, 1)).squeeze(1)


def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of x that ``model`` classifies as y."""
    y = check_labels(y, len(x), "y")
    return (predict(model, x, batch_size).argmax(1) == y.to(x.device)).float().mean().item()


def attack_table(classifier, defenses: dict, x: torch.Tensor, y: torch.Tensor, attacks: dict,
                 eps_list, *, norm: str = "linf") -> list[dict]:
    """Accuracy of the classifier and of each defense on examples crafted on the classifier.

    ``attacks`` maps a name to ``(attack_fn, options)`` with the library's attack signature;
    ``defenses`` maps a name to a model (e.g. INC). Each row: attack, norm, eps, then the
    accuracy of ``"classifier"`` and of every defense. eps = 0 gives the clean row.
    """
    rows = []
    for name, (attack, options) in attacks.items():
        for eps in eps_list:
            x_adv = x if eps == 0 else attack(classifier, x, y, eps, norm=norm, **options)
            row = {"attack": name, "norm": norm, "eps": float(eps),
                   "classifier": accuracy(classifier, x_adv, y)}
            for d_name, defense in defenses.items():
                row[d_name] = accuracy(defense, x_adv, y)
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 3) -> str:
    """A Markdown table of ``rows`` (floats rounded to ``digits``)."""
    columns = columns or list(rows[0])

    def fmt(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def default_results_dir() -> Path:
    """``$RMD_RESULTS_DIR``, else ``results/`` in the repository (or the working directory)."""
    env = os.environ.get("RMD_RESULTS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo / "results" if (repo / "pyproject.toml").exists() else Path("results")


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN; a table cell with no value (e.g. no valid pair)
    return obj


@dataclass
class Run:
    """One execution of a chapter: its settings, timings, claims and results file.

    ``run.timer(name)`` times a block; ``run.claim(...)`` records a checked statement;
    ``run.write(headline, **tables)`` writes ``<results_dir>/<chapter>.json``;
    ``run.assert_claims()`` then fails loudly if any claim failed.
    """

    chapter: str
    profile: Profile
    seed: int
    device: torch.device
    results_dir: Path | None = None
    data_sources: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    claims: list = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter)

    @contextmanager
    def timer(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def record_data(self, dataset) -> None:
        self.data_sources[dataset.name] = dataset.source

    def record_model(self, name: str, model) -> None:
        self.models[name] = getattr(model, "provenance", "unknown")

    def claim(self, name: str, value: float, op: str, threshold: float) -> bool:
        """Record whether ``value op threshold`` holds (op one of >=, >, <=, <)."""
        if op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}.")
        value = float(value)
        passed = math.isfinite(value) and bool(_OPS[op](value, threshold))
        self.claims.append({"name": name, "value": value, "op": op,
                            "threshold": float(threshold), "passed": passed})
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {value:.4g} {op} {threshold:.4g}")
        return passed

    def provenance(self) -> dict:
        import torchvision

        from . import __version__
        dev = self.device
        return {
            "profile": self.profile.name,
            "seed": self.seed,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "cpu_threads": torch.get_num_threads(),
            "data_source": dict(self.data_sources),
            "models": dict(self.models),
            "versions": {"rmd_lib": __version__, "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "timings": {**{k: round(v, 3) for k, v in self.timings.items()},
                        "total": round(time.perf_counter() - self._t0, 3)},
        }

    def write(self, headline: dict, **tables) -> Path:
        """Write the results file; ``headline`` holds the chapter's key numbers."""
        bad = [k for k, v in headline.items()
               if isinstance(v, bool) or not (isinstance(v, numbers.Real) and math.isfinite(v))]
        if bad:
            raise ValueError(f"headline values must be finite numbers; not so for {bad}.")
        out_dir = Path(self.results_dir) if self.results_dir else default_results_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.chapter}.json"
        payload = {"chapter": self.chapter, "profile": self.profile.name,
                   "provenance": self.provenance(), "headline": headline,
                   "claims": self.claims, "tables": tables}
        tmp = path.with_suffix(".json.part")
        tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=False))
        tmp.replace(path)
        print(f"results written to {path}")
        return path

    def assert_claims(self) -> None:
        failed = [c for c in self.claims if not c["passed"]]
        if failed:
            lines = [f"{c['name']}: {c['value']:.4g} {c['op']} {c['threshold']:.4g} is false" for c in failed]
            raise AssertionError(f"{len(failed)} claim(s) of chapter {self.chapter!r} failed "
                                 f"(profile {self.profile.name}):\n  " + "\n  ".join(lines))


def start_run(chapter: str, profile="auto", seed: int = 0, device="auto",
              results_dir: str | Path | None = None) -> Run:
    """Resolve the device and profile, seed everything, and open the chapter's :class:`Run`."""
    from .profiles import get_profile, resolve_device
    from .training import set_seed

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    dev = resolve_device(device)
    prof = get_profile(profile, dev)
    set_seed(seed)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats slow CPU arithmetic many times over
    print(f"chapter {chapter}: profile {prof.name}, device {dev}, seed {seed}")
    return Run(chapter, prof, seed, dev, Path(results_dir) if results_dir else None)
