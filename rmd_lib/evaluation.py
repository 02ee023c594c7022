"""Accuracy tables, the chapters' claims, and the results files that the book and tests read."""
from __future__ import annotations

import json
import math
import numbers
import operator
import os
import platform
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checks import check_images, check_labels, check_positive_int
from .profiles import Profile
from .randomness import chunked, randomised

__all__ = ["predict", "predict_chunk", "confidence", "accuracy", "attack_table", "markdown_table", "Run", "start_run",
           "default_results_dir", "wilson_interval", "paired_difference", "strict_claims",
           "TIME_BUDGET_S", "EXPECTED_TIME", "expected_time", "CHAPTERS",
           "standard_summary"]


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``model`` on x (N, C, H, W) in [0, 1], computed in batches. A randomised
    model (INC, DIP) sees each batch as part of one call on all N images, so the logits do
    not depend on ``batch_size`` (see :func:`rmd_lib.randomness.chunked`). None picks the
    batch from the memory budget (:func:`predict_chunk`)."""
    check_images(x, "x")
    if batch_size is None:
        batch_size = predict_chunk(model, x)
    else:
        batch_size = check_positive_int(batch_size, "batch_size")
    return torch.cat(chunked(model, len(x), batch_size, lambda rows: model(x[rows])))


def _scorer(model):
    """The deterministic classifier inside a randomised wrapper (INC, BPDA, the DIP defense
    and its BPDA, the unrolled model), or None."""
    for path in (("classifier",), ("inc", "classifier"), ("defense", "classifier")):
        part = model
        for name in path:
            part = getattr(part, name, None)
        if isinstance(part, torch.nn.Module):
            return part
    return None


def predict_chunk(model, x: torch.Tensor) -> int:
    """Images per batch of :func:`predict` under the memory budget (:mod:`rmd_lib.memory`):
    three times the bytes that one image's forward pass would save for a gradient (more
    than a pass without gradient holds). A randomised model's projection or fit chunks
    itself under the same budget, so for INC, BPDA and the DIP defense the classifier that
    scores the purified images is measured, and they are not run for the probe. The probe
    leaves the model's training flags and random streams as it found them."""
    from .memory import budget_bytes, rows_per_chunk, saved_bytes

    probe = _scorer(model) if randomised(model) else None
    if probe is None:
        probe = model
    draws = randomised(probe)
    state = [(d.offset, d.call) for d in draws]
    modes = ([(m, m.training) for m in probe.modules()]
             if isinstance(probe, torch.nn.Module) else [])
    for m, _ in modes:
        m.training = False
    try:
        row = 3 * saved_bytes(lambda: probe(x[:1]), exclude=probe)
    finally:
        for m, mode in modes:
            m.training = mode
        for d, (offset, call) in zip(draws, state):
            d.offset, d.call = offset, call
    device = x.device
    return min(max(len(x), 1), rows_per_chunk(row, budget_bytes(device), "predict (one image)"))


def confidence(model, x: torch.Tensor, y: torch.Tensor,
               batch_size: int | None = None) -> torch.Tensor:
    """The model's softmax probability of the true class y, per image: (N,). ``batch_size``
    as in :func:`predict` (None: from the memory budget)."""
    probs = predict(model, x, batch_size).softmax(dim=1)
    return probs.gather(1, y.to(probs.device).view(-1, 1)).squeeze(1)


def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Fraction of x that ``model`` classifies as y. ``batch_size`` as in :func:`predict`
    (None: from the memory budget)."""
    y = check_labels(y, len(x), "y")
    return (predict(model, x, batch_size).argmax(1) == y.to(x.device)).float().mean().item()


def attack_table(classifier, defenses: dict, x: torch.Tensor, y: torch.Tensor, attacks: dict,
                 eps_list, *, norm: str = "linf", outcomes: dict | None = None) -> list[dict]:
    """Accuracy of the classifier and of each defense on examples crafted on the classifier.

    ``attacks`` maps a name to ``(attack_fn, options)`` with the library's attack signature;
    ``defenses`` maps a name to a model (e.g. INC). Each row: attack, norm, eps, then the
    accuracy of ``"classifier"`` and of every defense. eps = 0 gives the clean row.
    ``outcomes``, a dict, receives the per-image results behind each accuracy, for paired
    comparisons: ``outcomes[attack, eps, model]`` is an (N,) bool tensor, model being
    ``"classifier"`` or a defense's name.
    """
    rows = []
    for name, (attack, options) in attacks.items():
        for eps in eps_list:
            x_adv = x if eps == 0 else attack(classifier, x, y, eps, norm=norm, **options)
            row = {"attack": name, "norm": norm, "eps": float(eps)}
            for m_name, model in {"classifier": classifier, **defenses}.items():
                ok = _correct(model, x_adv, y)
                row[m_name] = ok.float().mean().item()
                if outcomes is not None:
                    outcomes[name, float(eps), m_name] = ok.cpu()
            rows.append(row)
    return rows


def _correct(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = check_labels(y, len(x), "y")
    return predict(model, x).argmax(1) == y.to(x.device)


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 3) -> str:
    """A Markdown table of ``rows`` (floats rounded to ``digits``)."""
    columns = columns or list(rows[0])

    def fmt(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def wilson_interval(successes, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` trials: (low, high) in [0, 1].

    For an accuracy ``acc`` over ``n`` images pass ``acc * n``. Unlike the normal
    approximation the interval stays inside [0, 1] and is not empty at 0 or n successes.
    """
    from scipy.stats import norm

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}.")
    k = float(successes)
    if not -1e-9 <= k <= n + 1e-9:
        raise ValueError(f"successes must lie in [0, n = {n}], got {successes!r}.")
    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a, b, level: float = 0.95) -> dict[str, float]:
    """Mean of ``b - a`` over paired items (the same images, or the same search starts) with
    its ``level`` t-interval; for 0/1 outcomes also McNemar's exact two-sided p-value.

    ``a`` and ``b`` are 1-D tensors or arrays of equal length (bools count as 0/1). Returns
    ``mean``, ``low``, ``high``, ``n`` and, for 0/1 data, ``p_mcnemar``.
    """
    from scipy.stats import binomtest, t as student_t

    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=float)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D and paired (same length), got {a.shape} and {b.shape}.")
    if len(a) < 2:
        raise ValueError(f"a paired difference needs at least 2 pairs, got {len(a)}.")
    d = b - a
    n, mean = len(d), float(d.mean())
    half = float(student_t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    out = {"mean": mean, "low": mean - half, "high": mean + half, "n": n}
    if set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}:
        gained, lost = int((d > 0).sum()), int((d < 0).sum())
        out["p_mcnemar"] = (1.0 if gained + lost == 0
                            else float(binomtest(gained, gained + lost, 0.5).pvalue))
    return out


def strict_claims() -> bool:
    """Whether a failed claim raises (``RMD_STRICT=1``, as ``make test`` sets) or is only
    reported on the page (the default, so that the book publishes what it measured)."""
    value = os.environ.get("RMD_STRICT", "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"RMD_STRICT must be 0 or 1, got {value!r}.")
    return value == "1"


def default_results_dir() -> Path:
    """``$RMD_RESULTS_DIR``, else ``results/`` in the repository (or the working directory)."""
    env = os.environ.get("RMD_RESULTS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo / "results" if (repo / "pyproject.toml").exists() else Path("results")


def _peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb * (1 if platform.system() == "Darwin" else 1024) / 2**30, 3)


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}

# What one chapter is expected to take in each profile. The budgets (seconds) are the ones
# the profiles were sized for; scripts/run_notebooks.py flags a chapter over its budget.
TIME_BUDGET_S = {"smoke": 90.0, "standard": 18 * 60.0}
# The book's chapters, by the name each passes to start_run.
CHAPTERS = ("generative_models", "invert_and_classify", "white_box_attacks",
            "substitute_attacks", "adaptive_attacks", "overpowered_attack",
            "manifold_training", "faces", "deep_image_prior")
# Wall times measured at `standard` on 2 CPU cores with nothing else running, in seconds,
# each chapter in `make book`'s order (the models it loads trained by the chapters before
# it), and where. None: not timed alone at the present sizes. The sizes of `standard` have
# not changed since these runs.
STANDARD_MEASURED_S = {
    "generative_models": 642.0, "invert_and_classify": 569.0,
    "white_box_attacks": 586.0, "substitute_attacks": 551.0, "adaptive_attacks": 731.0,
    "overpowered_attack": 144.0, "manifold_training": 908.0, "faces": 795.0,
    "deep_image_prior": 894.0,
}
STANDARD_MEASURED_WHERE = ("all nine in one `make book` with nothing else running and an "
                           "empty model cache, at commit ba3696c")


def _standard_book_min() -> int | None:
    """The nine chapters' measured minutes together; None while one is not measured."""
    times = [STANDARD_MEASURED_S.get(c) for c in CHAPTERS]
    return None if None in times else round(sum(times) / 60)


STANDARD_BOOK_MIN = _standard_book_min()


def standard_summary() -> str:
    """The README's line for `standard`: each chapter's measured minutes, and the book's."""
    parts = [f"{i}: {round(t / 60)}" if t else f"{i}: not timed"
             for i, t in enumerate((STANDARD_MEASURED_S.get(c) for c in CHAPTERS), 1)]
    total = (f"the nine chapters {STANDARD_BOOK_MIN} min together" if STANDARD_BOOK_MIN
             else "not yet timed alone as a whole book")
    over = [str(i) for i, c in enumerate(CHAPTERS, 1)
            if (STANDARD_MEASURED_S.get(c) or 0) > TIME_BUDGET_S["standard"]]
    budget = (f"; over the {TIME_BUDGET_S['standard'] / 60:g}-min budget per chapter: "
              f"chapter{'s' if len(over) > 1 else ''} {', '.join(over)}" if over else "")
    return (f"measured alone on 2 CPU cores, in minutes per chapter ({'; '.join(parts)}); "
            f"{total}{budget}")


# colab's budget per chapter on a T4, and the factor by which an H200's fp32 rate exceeds
# a T4's: the check scripts/gpu_check.sh runs on an H200 is colab's budget / 8 (75 s).
COLAB_BUDGET_S = 600.0
H200_TO_T4 = 8
# Until scripts/gpu_check.sh has run every chapter on a GPU, colab's times are estimates.
COLAB_MEASURED = False


def expected_time(profile: str, chapter: str | None = None) -> str:
    """How long one chapter is expected to take in ``profile``, and where the figure comes
    from: a measurement, a budget the profile was sized for, or an estimate (said so)."""
    measured = STANDARD_MEASURED_S.get(chapter)
    if profile == "smoke":
        return "at most 90 s on 2 CPU cores (the profile's budget per chapter)"
    if profile == "standard":
        budget = TIME_BUDGET_S["standard"]
        if measured:
            over = (f", over the {budget / 60:g}-min budget the profile was sized for"
                    if measured > budget else "")
            return (f"about {round(measured / 60)} min on 2 CPU cores (measured alone: "
                    f"{measured:.0f} s{over})")
        total = (f"; the nine chapters measured {STANDARD_BOOK_MIN} min together"
                 if STANDARD_BOOK_MIN else "")
        return (f"at most {budget / 60:g} min on 2 CPU cores (the profile's budget, not a "
                f"measurement{total})")
    if profile == "colab":
        basis = ("" if COLAB_MEASURED else
                 f"an estimate, not yet run on a GPU: colab is sized for "
                 f"{COLAB_BUDGET_S / H200_TO_T4:g} s on an H200, and a T4's fp32 rate "
                 f"is about 1/{H200_TO_T4} of an H200's; ")
        return (f"at most {COLAB_BUDGET_S / 60:g} min on a free Colab T4 GPU ({basis}"
                "scripts/gpu_check.sh measures it)")
    if profile == "paper":
        return ("hours on one 80 GB GPU (an estimate: the paper's training and projection "
                "budgets; no chapter has run to the end at this profile)")
    if profile == "colab-dryrun":
        return "a few minutes on a CPU (colab's sizes, every iteration count cut to 2)"
    return "no estimate for this profile"


_PROFILE_PURPOSE = {
    "smoke": "the quick check that CI runs; its numbers are only sanity checks",
    "standard": "the CPU book build",
    "colab": "a free Colab GPU",
    "paper": "the paper's scale, on one large GPU",
    "colab-dryrun": "colab's sizes on a CPU, to find shape and memory errors",
}
# The full size (training, test) of the datasets that come in a smaller offline version.
_FULL_SIZE = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}
_DATA_LABEL = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "celeba": "CelebA",
               "fashion_shirts_standin": "Faces (stand-in)", "imagenet": "ImageNet photos"}
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/()]+/)*([^\s/()]+)")


def _duration(seconds: float) -> str:
    """12.3 -> "12 s"; 725 -> "12 min 5 s"; 4000 -> "1 h 6 min"."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


# One line per profile (the chapter-independent form of expected_time).
EXPECTED_TIME = {name: expected_time(name) for name in
                 ("smoke", "standard", "colab", "paper", "colab-dryrun")}


def _short_source(source: str) -> str:
    """A data source with each absolute path cut to its last part: no machine's folders
    appear on a published page."""
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}", source)


def _glue_text(name: str, value: str) -> None:
    """Paste ``value`` into the book's text as {glue:text}`name`; without myst-nb (on
    Colab, say) there is no book to paste into, and nothing happens."""
    try:
        from myst_nb import glue
    except ImportError:
        return
    glue(name, value, display=False)


def _show_markdown(text: str) -> None:
    """Display Markdown in a notebook (rendered by MyST in the book); print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the book extras
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(text))
    else:
        print(text)


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
    ``run.report_claims()`` then shows every claim with PASS or FAIL, and raises only
    under ``RMD_STRICT=1``; ``run.assert_claims()`` always raises on a failed claim.
    """

    chapter: str
    profile: Profile
    seed: int
    device: torch.device
    results_dir: Path | None = None
    data_sources: dict = field(default_factory=dict)
    data_sizes: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    claims: list = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter)

    @contextmanager
    def timer(self, name: str):
        """Time a block. On CUDA the clock is read after the device has finished its queued
        kernels (CUDA runs asynchronously), at the start and at the end."""
        self._synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def record_data(self, dataset, name: str | None = None) -> None:
        """Record where a dataset came from and how many images of it this run uses.

        ``dataset``: a :class:`rmd_lib.data.Dataset` (``x_train``, ``x_test``) or a set of
        images with ``x`` (N, C, H, W); both need ``source``. ``name`` defaults to
        ``dataset.name``.
        """
        name = name or getattr(dataset, "name", None)
        if not name:
            raise ValueError("record_data needs a name: the dataset has no .name, so pass "
                             "name=... (for example name='imagenet').")
        self.data_sources[name] = dataset.source
        if hasattr(dataset, "x_train") and hasattr(dataset, "x_test"):
            self.data_sizes[name] = {"train": len(dataset.x_train), "test": len(dataset.x_test)}
        elif hasattr(dataset, "x"):
            self.data_sizes[name] = {"images": len(dataset.x),
                                     "shape": [int(d) for d in dataset.x.shape[1:]]}

    def record_model(self, name: str, model) -> None:
        self.models[name] = getattr(model, "provenance", "unknown")

    def claim(self, name: str, value: float, op: str, threshold: float, *,
              why: str | None = None, detail: str | None = None) -> bool:
        """Record whether ``value op threshold`` holds (op one of >=, >, <=, <).

        ``why`` says where the threshold comes from (what the paper predicts, or which
        sampling error the margin covers); ``detail`` adds the numbers behind the value,
        such as an estimate with its interval. Both are shown in :meth:`report_claims`.
        """
        if op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}.")
        value = float(value)
        passed = math.isfinite(value) and bool(_OPS[op](value, threshold))
        self.claims.append({"name": name, "value": value, "op": op,
                            "threshold": float(threshold), "passed": passed,
                            "why": why, "detail": detail})
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
            "data_sizes": dict(self.data_sizes),
            "models": dict(self.models),
            "versions": {"rmd_lib": __version__, "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "timings": {**{k: round(v, 3) for k, v in self.timings.items()},
                        "total": round(time.perf_counter() - self._t0, 3)},
            # the most memory this process held (resident), and the most GPU memory this
            # chapter's tensors held at once (None on a CPU)
            "peak_rss_gb": _peak_rss_gb(),
            "peak_gpu_gb": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
                            if dev.type == "cuda" else None),
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

    def elapsed(self) -> float:
        """Seconds since :func:`start_run` opened this run."""
        return time.perf_counter() - self._t0

    def _device_text(self) -> str:
        dev = self.device
        if dev.type == "cuda":
            return f"{dev} ({torch.cuda.get_device_name(dev)})"
        name = platform.processor() or platform.machine() or "CPU"
        threads = torch.get_num_threads()
        return f"{dev} ({name}, {threads} thread{'s' if threads != 1 else ''})"

    def _data_lines(self) -> list[str]:
        lines = []
        for name, source in self.data_sources.items():
            label = _DATA_LABEL.get(name, name)
            size = self.data_sizes.get(name)
            if size is None:
                used = "sizes not recorded"
            elif "train" in size:
                used = f"{size['train']:,} training and {size['test']:,} test images"
                full = _FULL_SIZE.get(name)
                if full and (size["train"] < full[0] or size["test"] < full[1]):
                    used += f", not the full {full[0]:,}/{full[1]:,}"
            else:
                shape = "×".join(str(d) for d in size["shape"][1:])
                used = f"{size['images']:,} images at {shape}"
            lines.append(f"- **{label}**: {used}; from {_short_source(source)}")
        return lines or ["- no dataset recorded"]

    def banner_markdown(self) -> str:
        """The banner that opens a chapter, as a MyST admonition: profile and the time it is
        expected to take, device, data sources with sizes, and seed."""
        name = self.profile.name
        purpose = _PROFILE_PURPOSE.get(name)
        expected = expected_time(name, self.chapter)
        lines = [f"- **Profile** `{name}`" + (f", {purpose}" if purpose else "")
                 + f". Expected time for this chapter: {expected}.",
                 f"- **Device**: {self._device_text()}.",
                 "- **Data**:", *("  " + line for line in self._data_lines()),
                 f"- **Seed**: {self.seed}.",
                 "",
                 "The results on this page come from this run; the box *What this run "
                 "shows* at the end gives the time it took."]
        return (f"```{{admonition}} This run: profile {name}, {self.device.type}, "
                f"seed {self.seed}\n:class: note rmd-banner\n" + "\n".join(lines) + "\n```")

    def banner(self, **datasets) -> None:
        """Show the chapter's banner (:meth:`banner_markdown`). Keywords record more data
        first, by name: ``run.banner(imagenet=photos)``."""
        for name, dataset in datasets.items():
            self.record_data(dataset, name=name)
        _show_markdown(self.banner_markdown())
        # the opening box of every chapter quotes its standard time as {glue:text}
        _glue_text("time_standard", expected_time("standard", self.chapter))

    def claims_markdown(self) -> str:
        """The "What this run shows" box: each claim with PASS/FAIL, its value, its threshold
        and why that threshold, as a MyST admonition."""
        failed = sum(not c["passed"] for c in self.claims)
        kind = "warning" if failed else "tip"
        title = (f"What this run shows: {len(self.claims) - failed} of {len(self.claims)} "
                 f"claims hold (profile {self.profile.name}, {self.device.type})")
        if not self.claims:
            return (f"```{{admonition}} {title}\n:class: {kind} rmd-claims\n"
                    f"This profile checks no claim.\n\n{self.wall_time_text()}\n```")
        rows = ["| result | claim | value | threshold | why this threshold |", "|---|---|---|---|---|"]
        for c in self.claims:
            value = f"{c['value']:.4g}" + (f" ({c['detail']})" if c.get("detail") else "")
            cells = ["**PASS**" if c["passed"] else "**FAIL**", c["name"], value,
                     f"{c['op']} {c['threshold']:.4g}", c.get("why") or ""]
            rows.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
        note = ("A FAIL is a result, not a broken build: it is what this run measured. "
                "`make test` (with `RMD_STRICT=1`) treats it as an error.")
        return (f"````{{admonition}} {title}\n:class: {kind} rmd-claims\n" + "\n".join(rows)
                + f"\n\n{note}\n\n{self.wall_time_text()}\n````")

    def wall_time_text(self) -> str:
        """How long this run took so far, against the profile's budget per chapter."""
        took = self.elapsed()
        text = f"This run took {_duration(took)} from its start to this box"
        budget = TIME_BUDGET_S.get(self.profile.name)
        if budget is not None:
            over = "over" if took > budget else "within"
            text += (f", {over} the `{self.profile.name}` budget of {_duration(budget)} "
                     "per chapter")
        return text + "."

    def report_claims(self) -> None:
        """Show the claims box (in a notebook; printed elsewhere). Under ``RMD_STRICT=1`` a
        failed claim then raises, as :meth:`assert_claims` does; otherwise it stays a
        reported result, so that the book shows it rather than failing to build."""
        _show_markdown(self.claims_markdown())
        if strict_claims():
            self.assert_claims()

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
    print(f"chapter {chapter}: profile {prof.name}, device {dev}, seed {seed}; expected "
          f"time: {expected_time(prof.name, chapter)}")
    return Run(chapter, prof, seed, dev, Path(results_dir) if results_dir else None)
