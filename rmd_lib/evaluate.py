"""The heavy evaluations as one command, on one process or many: ``python -m rmd_lib.evaluate``.

Tasks: ``projection`` (INC's projection error per image, chapter 2), ``robust-accuracy``
(INC under chapter 5's attacks, per image and in the worst case), ``pairs`` (min-max pairs
at chosen budgets, chapter 6) and ``dip`` (DIP curves and the defense's accuracy over an
image folder, chapter 9). Each writes ``<out>/<task>.json`` in the schema of the chapters'
results files (:meth:`rmd_lib.evaluation.Run.write`).

The images are cut into chunks of ``--chunk`` images. Launched by ``torchrun``, rank r of
W takes a contiguous share of the chunks; every random draw about an image comes from its
own stream, keyed by its global index (:mod:`rmd_lib.randomness`), so the shares can be
computed anywhere and in any order and the merged file is the one process's file. Rank 0
gathers the shares (``torch.distributed.gather_object``) and writes the results.

Each finished chunk is written at once, atomically (a temporary file, then ``os.replace``),
with a SHA-256 checksum of its content and of the run's settings. ``--resume`` (or a
restart by ``torchrun --max-restarts``) reuses the finished chunks of the same settings,
moves a corrupted one aside and computes it again, and refuses chunks of other settings.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["main", "TASKS", "ATTACKS", "EvaluateError", "read_results", "robust_accuracy_from",
           "with_costly"]

TASKS = ("projection", "robust-accuracy", "pairs", "dip")
# Command-line name -> the column of chapter 5's table. The order is chapter 5's: a
# randomised attacker's call counts, and so its draws, depend on the attacks run before.
ATTACKS = {"fgsm": "FGSM (transfer)", "pgd": "PGD (transfer)", "bpda": "BPDA",
           "bpda-eot": "BPDA+EOT", "tangent": "tangent BPDA+EOT", "latent": "latent"}
# Images per chunk when --chunk is not given.
DEFAULT_CHUNK = {"projection": 32, "robust-accuracy": 8, "pairs": 16, "dip": 2}
FORMAT = 1
EXIT_AFTER_ENV = "RMD_EVALUATE_EXIT_AFTER"  # test hook "RANK:K": that rank dies after K chunks


class EvaluateError(ValueError):
    """A bad option, or chunks on disk that do not fit this run."""


# ----------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------
def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EvaluateError(f"{what} must be comma-separated numbers such as 0.1,0.2, "
                            f"got {text!r}.") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise EvaluateError(f"{what} must list finite numbers >= 0, got {text!r}.")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rmd_lib.evaluate", allow_abbrev=False,
        description="Run one of the book's heavy evaluations, on one process or under "
                    "torchrun, resumably; writes <out>/<task>.json.")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--profile", default="auto", help="smoke, standard, colab, paper or auto")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one profile field (repeatable); the profile is then named "
                        "<profile>-custom")
    p.add_argument("--dataset", default="mnist",
                   help="mnist, fashion_mnist, a comma-separated list or all (not for dip)")
    p.add_argument("--images", default="offline",
                   help="dip: 'offline', 'imagenette' or a folder with labels.csv")
    p.add_argument("--classifier", default="auto", help="dip: auto, resnet50 or efficientnet_lite0")
    # Not --n and --start: torchrun's own parser takes abbreviations of its options
    # (--nnodes, --start-method) from the whole command line.
    p.add_argument("--count", type=int, default=None,
                   help="images (pairs for the pairs task); default: the profile's count")
    p.add_argument("--first", type=int, default=0, help="global index of the first image")
    p.add_argument("--chunk", type=int, default=None, help="images per chunk")
    p.add_argument("--out", required=True, help="folder for the chunks and the results file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--generator", default="vae", help="vae or gan: INC's generator")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help=f"robust-accuracy: comma-separated, from {', '.join(ATTACKS)}")
    p.add_argument("--norms", default="linf,l2", help="robust-accuracy: linf, l2 or both")
    p.add_argument("--eps-linf", default=None,
                   help="robust-accuracy: L-inf budgets (default: the profile's, as chapter 5)")
    p.add_argument("--eps-l2", default=None,
                   help="robust-accuracy: L2 budgets (default: the profile's, as chapter 5)")
    p.add_argument("--budgets", default=None,
                   help="pairs: L2 budgets (default the profile's) | dip: BIM L-inf budgets")
    p.add_argument("--classifier-checkpoint", default=None,
                   help="weights for the classifier instead of the cache (one dataset)")
    p.add_argument("--generator-checkpoint", default=None,
                   help="weights for the generator instead of the cache (one dataset)")
    p.add_argument("--no-train", action="store_true",
                   help="fail, rather than train, when a model is not in the cache")
    p.add_argument("--no-download", action="store_true",
                   help="use local or offline copies of the data only")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished chunks in --out (a torchrun restart implies it)")
    return p


def _profile(args):
    from .profiles import get_profile, resolve_device

    try:
        P = get_profile(args.profile, resolve_device(args.device))
    except ValueError as exc:
        raise EvaluateError(str(exc)) from None
    if not args.set:
        return P
    changes = {}
    fields = P.to_dict()
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields or key in ("name", "extra"):
            raise EvaluateError(f"--set {item!r}: expected FIELD=VALUE with FIELD a profile "
                                f"field such as proj_steps; see rmd_lib/profiles.py.")
        try:
            value = json.loads(raw.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            raise EvaluateError(f"--set {item!r}: the value must be a number, a list or "
                                "null.") from None
        if isinstance(fields[key], tuple):
            value = tuple(value)
        changes[key] = value
    return P.with_(name=f"{P.name}-custom", **changes)


@dataclass
class Plan:
    """What a run computes: the settings every chunk is checked against, and its units,
    one (dataset, start, stop) per chunk, in the order of the merged file."""

    task: str
    settings: dict
    units: list


def make_plan(args, P) -> Plan:
    """Check the options and cut the work into chunks (no model is loaded yet)."""
    from .data import dataset_names

    task = args.task
    if task not in TASKS:
        raise EvaluateError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if args.first < 0:
        raise EvaluateError(f"--first must be >= 0, got {args.first}.")
    default_n = {"projection": P.n_sweep, "robust-accuracy": P.n_adaptive,
                 "pairs": P.minmax_n, "dip": P.n_dip}[task]
    n = default_n if args.count is None else args.count
    chunk = DEFAULT_CHUNK[task] if args.chunk is None else args.chunk
    if n < 1 or chunk < 1:
        raise EvaluateError(f"--count and --chunk must be >= 1, got {n} and {chunk}.")
    if args.generator not in ("vae", "gan"):
        raise EvaluateError(f"--generator must be vae or gan, got {args.generator!r}.")
    settings = {"format": FORMAT, "task": task, "profile": P.to_dict(), "seed": args.seed,
                "start": args.first, "n": n, "chunk": chunk}
    if task == "dip":
        datasets = ["imagenet"]
        settings.update(images=str(args.images), classifier=args.classifier,
                        budgets=list(_floats(args.budgets, "--budgets") if args.budgets
                                     else P.dip_eps))
    else:
        try:
            datasets = dataset_names(args.dataset)
        except ValueError as exc:
            raise EvaluateError(str(exc)) from None
        settings.update(generator=args.generator)
    settings["datasets"] = datasets
    if task == "robust-accuracy":
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
        bad = [a for a in attacks if a not in ATTACKS]
        if bad or not attacks:
            raise EvaluateError(f"unknown attack(s) {bad}; choose from {', '.join(ATTACKS)}.")
        norms = [m.strip() for m in args.norms.split(",") if m.strip()]
        from .attack_tables import adaptive_eps

        grid = adaptive_eps(P)  # chapter 5's budgets
        if not norms or any(m not in grid for m in norms):
            raise EvaluateError(f"--norms must list linf and/or l2, got {args.norms!r}.")
        given = {"linf": args.eps_linf, "l2": args.eps_l2}
        eps = {m: list(_floats(given[m], f"--eps-{m}")) if given[m] else grid[m]
               for m in norms}
        settings.update(attacks=[ATTACKS[a] for a in ATTACKS if a in attacks], eps=eps)
    if task == "pairs":
        settings["budgets"] = list(_floats(args.budgets, "--budgets") if args.budgets
                                   else P.minmax_eps)
    checkpoints = {"classifier": args.classifier_checkpoint,
                   "generator": args.generator_checkpoint}
    for what, path in checkpoints.items():
        if path is not None and not Path(path).is_file():
            raise EvaluateError(f"--{what}-checkpoint {path}: no such file. Give the path of "
                                "a saved state dict (.safetensors or .pth), or leave the "
                                "option out to use the cache.")
    if any(checkpoints.values()) and len(datasets) != 1:
        raise EvaluateError("a checkpoint option names one model: use it with one --dataset.")
    units = [(name, s, min(s + chunk, args.first + n))
             for name in datasets for s in range(args.first, args.first + n, chunk)]
    # as the chunk files hold them (tuples become lists), so that the two compare equal
    return Plan(task, json.loads(json.dumps(settings)), units)


# ----------------------------------------------------------------------------------------
# Chunk files
# ----------------------------------------------------------------------------------------
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def chunk_path(out: Path, task: str, unit) -> Path:
    name, start, stop = unit
    return out / "chunks" / task / f"{name}-{start:07d}-{stop:07d}.json"


def write_chunk(path: Path, settings: dict, unit, payload: dict) -> None:
    """Write one finished chunk atomically: a temporary file in the same folder, flushed to
    disk, then renamed over the final name, so a killed process leaves either no file or a
    whole one."""
    body = {"settings": settings, "unit": list(unit), "payload": payload}
    record = {"sha256": _digest(body), "settings_sha256": _digest(settings), **body}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_chunk(path: Path):
    """A chunk file's record, or None when it is corrupted (unreadable, or its content does
    not match its checksum)."""
    try:
        record = json.loads(path.read_text())
        body = {k: record[k] for k in ("settings", "unit", "payload")}
        ok = record["sha256"] == _digest(body)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if ok else None


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the chunks, {b!r} now")
    return out


def check_existing(out: Path, plan: Plan, resume: bool, ignore=()) -> None:
    """Refuse to mix runs: chunks on disk need --resume, and must have this run's settings
    (but for the keys in ``ignore``, not known yet)."""
    folder = out / "chunks" / plan.task
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if files and not resume:
        raise EvaluateError(f"{folder} already holds {len(files)} finished chunk(s) of an "
                            "earlier run. Pass --resume to reuse them, or choose another "
                            "--out; nothing was overwritten.")
    for f in files:
        record = read_chunk(f)
        if record is None:
            continue  # corrupted: its owner computes it again
        old = {k: v for k, v in record["settings"].items() if k not in ignore}
        new = {k: v for k, v in plan.settings.items() if k not in ignore}
        if old != new:
            diff = _differences(old, new)
            raise EvaluateError(
                f"--resume: {f} was written with other settings:\n  " + "\n  ".join(diff[:8])
                + "\nRerun with the options of that run, or choose another --out; nothing "
                  "was overwritten.")


# ----------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------
def weights_sha256(model) -> str:
    """A digest of a model's weights, so that resumed chunks are known to come from the
    same models."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_setups(args, P, run, names):
    """Dataset, classifier and generator per dataset name, as chapter 5's ``prepare`` gives
    them (the same cache), or from the checkpoint options."""
    from .data import default_data_dir, load_dataset
    from .experiment import Setup
    from .training import model_config, pretrained_or_train

    setups = {}
    for name in names:
        data = load_dataset(name, args.data_dir, n_train=P.n_train, n_test=P.n_test,
                            download=not args.no_download, verbose=False)
        run.record_data(data)
        models = {}
        for kind, ckpt in (("classifier", args.classifier_checkpoint),
                           (args.generator, args.generator_checkpoint)):
            if ckpt is None and args.no_train:
                # the name pretrained_or_train gives the cache entry of this model
                key = hashlib.sha256(json.dumps(model_config(kind, data, P, args.seed),
                                                sort_keys=True).encode()).hexdigest()[:12]
                cache = Path(args.cache_dir or default_data_dir() / "cache")
                path = cache / f"{kind}-{name}-{key}.safetensors"
                if not path.exists():
                    raise EvaluateError(
                        f"--no-train: the {kind} for {name} at profile {P.name} is not in "
                        f"the cache ({path} is missing). Run the command once without "
                        "--no-train, or the chapter, to train it; or pass a checkpoint.")
            models[kind] = pretrained_or_train(kind, data, P, seed=args.seed,
                                               device=run.device, cache_dir=args.cache_dir,
                                               checkpoint=ckpt, progress=False,
                                               verbose=False)
            run.record_model(f"{kind}_{name}", models[kind])
        model = models[args.generator]
        G = model.decoder if args.generator == "vae" else model
        setups[name] = Setup(name, data, models["classifier"], model, G)
    return setups


# ----------------------------------------------------------------------------------------
# The tasks: one chunk each, then the merge
# ----------------------------------------------------------------------------------------
def _bools(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.flatten().tolist()]


def attacks_for(s, P, seed: int, names, offset: int) -> dict:
    """Chapter 5's attacks on images ``offset, ...``: each draws its randomness (PGD's
    starts, the attacker's projections) for those global indices."""
    from .attacks import BPDA, fgsm, latent_space_attack, pgd

    clf = s.classifier
    mirror = s.attacker_inc(P, seed + 1)
    full = s.inc(P, seed + 2)
    mirror.draws.offset = full.draws.offset = int(offset)

    def steps(x):
        return dict(steps=P.adaptive_steps, seed=seed,
                    indices=torch.arange(offset, offset + len(x)))

    table = {
        "FGSM (transfer)": lambda x, y, e, n: fgsm(clf, x, y, e, norm=n),
        "PGD (transfer)": lambda x, y, e, n: pgd(clf, x, y, e, norm=n, **steps(x)),
        "BPDA": lambda x, y, e, n: pgd(BPDA(mirror), x, y, e, norm=n, **steps(x)),
        "BPDA+EOT": lambda x, y, e, n: pgd(BPDA(mirror, P.eot_samples), x, y, e, norm=n,
                                           **steps(x)),
        "tangent BPDA+EOT": lambda x, y, e, n: pgd(
            BPDA(mirror, P.eot_samples, backward="tangent"), x, y, e, norm=n, **steps(x)),
        "latent": lambda x, y, e, n: latent_space_attack(full, x, y, e, norm=n,
                                                         steps=P.latent_steps),
    }
    return {name: table[name] for name in names}


def compute_chunk(plan: Plan, ctx: dict, unit) -> dict:
    """The per-image results of one chunk, as JSON-ready lists."""
    name, start, stop = unit
    P, seed, dev, S = ctx["profile"], plan.settings["seed"], ctx["device"], plan.settings
    if plan.task == "projection":
        from .projection import project

        s = ctx["setups"][name]
        x, _ = s.test_images(stop - start, dev, offset=start)
        proj = project(s.G, x, steps=P.proj_steps, restarts=P.proj_restarts, seed=seed,
                       indices=torch.arange(start, stop))
        return {"mse": proj.mse.tolist()}
    if plan.task == "robust-accuracy":
        from .attack_tables import robust_outcomes

        s = ctx["setups"][name]
        x, y = s.test_images(stop - start, dev, offset=start)
        defense = s.inc(P, seed)
        attacks = attacks_for(s, P, seed, S["attacks"], start)
        out = {}
        for norm, eps_list in S["eps"].items():
            clean, by_eps = robust_outcomes(defense, x, y, attacks, eps_list, norm=norm,
                                            offset=start)
            out["clean"] = _bools(clean)
            out[norm] = {f"{e:g}": {a: _bools(ok) for a, ok in row.items()}
                         for e, row in by_eps.items()}
        return out
    if plan.task == "pairs":
        from .attacks import minmax_pairs

        s = ctx["setups"][name]
        out = {}
        for eps in S["budgets"]:
            pairs = minmax_pairs(s.G, s.classifier, float(eps), stop - start,
                                 steps=P.minmax_steps, seed=seed,
                                 indices=torch.arange(start, stop))
            out[f"{eps:g}"] = {"distance": pairs.distance.tolist(),
                               "divergence": pairs.divergence.tolist(),
                               "valid": _bools(pairs.valid),
                               "different": _bools(pairs.different),
                               "steps": [int(v) for v in pairs.steps.tolist()]}
        return out
    # dip: the clean photos and BIM examples crafted on the classifier, each fitted by DIP
    from .attack_tables import correct
    from .attacks import bim
    from .dip import deep_image_prior

    photos, clf = ctx["photos"], ctx["classifier"]
    x, y = photos.x[start:stop].to(dev), photos.y[start:stop].to(dev)
    groups = {"clean": x}
    for eps in S["budgets"]:
        groups[f"BIM {255 * eps:g}/255"] = bim(clf, x, y, eps, steps=P.dip_bim_steps)
    out = {}
    for g, (label, xg) in enumerate(groups.items()):
        # each group its own call of the images' streams, as a fresh defense call would be
        fit = deep_image_prior(xg, P.dip_steps, record_at=P.dip_record, seed=seed,
                               indices=torch.arange(start, stop), call=g, width=P.dip_width,
                               depth=P.dip_depth, lr=P.dip_lr)
        out[label] = {
            "input_correct": _bools(correct(clf, xg, y)),
            "steps": list(fit.steps),
            "correct": [_bools(correct(clf, img, y)) for img in fit.images],
            "mse_to_clean": [(img - x).pow(2).flatten(1).mean(1).tolist()
                             for img in fit.images]}
    return out


def _concat(parts: list):
    """Concatenate per-image lists along the images, recursively through dicts; lists of
    lists (per recorded step) concatenate per step."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if first and isinstance(first[0], list):
        return [sum((p[i] for p in parts), []) for i in range(len(first))]
    return sum(parts, [])


def merge(plan: Plan, payloads: list) -> tuple[dict, dict]:
    """The headline and tables of the results file, from the chunks' payloads in order."""
    from .attacks import MinMaxPairs

    S = plan.settings
    by_name = {}
    for unit, payload in zip(plan.units, payloads):
        by_name.setdefault(unit[0], []).append(payload)
    # the recorded steps are the same in every chunk: keep them once
    merged = {}
    for name, parts in by_name.items():
        if plan.task == "dip":
            merged[name] = {g: {"steps": parts[0][g]["steps"],
                                **_concat([{k: v for k, v in p[g].items() if k != "steps"}
                                           for p in parts])}
                            for g in parts[0]}
        else:
            merged[name] = _concat(parts)
    headline, tables = {}, {"per_image": merged}
    n = S["n"]
    if plan.task == "projection":
        for name, m in merged.items():
            mse = torch.tensor(m["mse"])
            headline[f"{name}_median_mse"] = float(mse.median())
            headline[f"{name}_mean_mse"] = float(mse.mean())
    elif plan.task == "robust-accuracy":
        tables["robust_accuracy"] = {}
        for name, m in merged.items():
            clean = torch.tensor(m["clean"], dtype=torch.bool)
            tables["robust_accuracy"][name] = {}
            for norm, eps_list in S["eps"].items():
                rows = []
                for eps in eps_list:
                    outcome = m[norm][f"{eps:g}"]
                    row = {"norm": norm, "eps": float(eps),
                           "clean": float(clean.float().mean())}
                    robust = clean.clone()
                    for attack in S["attacks"]:
                        ok = torch.tensor(outcome[attack], dtype=torch.bool)
                        row[attack] = float(ok.float().mean())
                        robust &= ok
                    row["worst case"] = float(robust.float().mean())
                    rows.append(row)
                tables["robust_accuracy"][name][norm] = rows
                top = rows[-1]
                headline[f"{name}_{norm}_{top['eps']:g}_worst_case"] = top["worst case"]
            headline[f"{name}_clean_inc"] = float(clean.float().mean())
    elif plan.task == "pairs":
        tables["pairs"] = {}
        for name, m in merged.items():
            rows = []
            for eps in S["budgets"]:
                p = m[f"{eps:g}"]
                empty = torch.empty(0)
                pairs = MinMaxPairs(empty, empty, empty, empty,
                                    torch.tensor(p["distance"]), torch.tensor(p["divergence"]),
                                    torch.tensor(p["valid"], dtype=torch.bool),
                                    torch.tensor(p["different"], dtype=torch.bool),
                                    torch.tensor(p["steps"]))
                rows.append({"eps": float(eps), **pairs.summary()})
                headline[f"{name}_{eps:g}_valid_and_different"] = rows[-1]["valid and different"]
            tables["pairs"][name] = rows
    else:
        P = S["profile"]
        curve = []
        m = merged["imagenet"]
        steps = m["clean"]["steps"]
        for k, step in enumerate(steps):
            row = {"steps": step}
            for g, part in m.items():
                row[g] = sum(part["correct"][k]) / n
                row[f"{g}: MSE to clean"] = sum(part["mse_to_clean"][k]) / n
            curve.append(row)
        tables["dip_curve"] = curve
        stop = P["dip_stop"] if P["dip_stop"] in steps else steps[-1]
        k = steps.index(stop)
        for g, part in m.items():
            slug = g.replace(" ", "_").replace("/", "_").lower()
            headline[f"{slug}_input_accuracy"] = sum(part["input_correct"]) / n
            headline[f"{slug}_defense_accuracy"] = sum(part["correct"][k]) / n
        tables["dip_stop"] = stop
    return headline, tables


# ----------------------------------------------------------------------------------------
# Reading a results file back into a chapter
# ----------------------------------------------------------------------------------------
def read_results(path, task: str, profile: str, seed: int) -> dict:
    """A results file of ``task`` written by this command, checked: it exists, it is one of
    this command's files, and it was computed with ``profile`` and ``seed``. Returns the
    parsed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results_from: {path} does not exist. Make it with python -m "
                                f"rmd_lib.evaluate --task {task} ... --out DIR and pass "
                                f"DIR/{task}.json.")
    try:
        res = json.loads(path.read_text())
        run = res["tables"]["evaluate"]
        settings = run["settings"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"results_from: {path} is not a results file of rmd_lib.evaluate "
                         "(no tables.evaluate.settings).") from None
    if run.get("task") != task:
        raise ValueError(f"results_from: {path} holds task {run.get('task')!r}; this chapter "
                         f"reads {task!r}.")
    if res.get("profile") != profile or settings.get("seed") != seed:
        raise ValueError(f"results_from: {path} was computed at profile "
                         f"{res.get('profile')!r}, seed {settings.get('seed')}; this run has "
                         f"profile {profile!r}, seed {seed}. Run the chapter with those, or "
                         "compute the file with --profile and --seed of this run.")
    return res


def robust_accuracy_from(path, profile, seed: int, names, eps: dict, attacks,
                         n: int) -> tuple[dict, dict, str]:
    """Chapter 5's robust-accuracy tables, ``{dataset: {norm: rows}}``, from a results file
    of ``--task robust-accuracy``, after checking that it covers this run: its profile and
    seed, the datasets ``names``, the budgets ``eps`` ({norm: list}), the ``attacks`` (in
    order) and the first ``n`` test images. Also returns the per-image outcomes,
    ``{dataset: {"clean": [...], norm: {eps: {attack: [...]}}}}``, and a sentence saying
    where the numbers were computed."""
    res = read_results(path, "robust-accuracy", profile.name, seed)
    run = res["tables"]["evaluate"]
    S = run["settings"]
    wanted = {"datasets": list(names), "eps": {m: [float(e) for e in v] for m, v in eps.items()},
              "attacks": list(attacks), "first image": 0, "images": n}
    found = {"datasets": [d for d in S["datasets"] if d in names],
             "eps": S["eps"], "attacks": S["attacks"], "first image": S["start"],
             "images": S["n"]}
    bad = [f"{k}: {found[k]!r} in the file, {wanted[k]!r} here" for k in wanted
           if found[k] != wanted[k]]
    if bad:
        raise ValueError(f"results_from: {path} does not match this chapter's run:\n  "
                         + "\n  ".join(bad) + "\nCompute it with the chapter's datasets, "
                         "budgets and attacks, and --count set to the profile's n_adaptive.")
    tables = {name: res["tables"]["robust_accuracy"][name] for name in names}
    outcomes = {name: res["tables"]["per_image"][name] for name in names}
    where = (f"{run['world_size']} process{'es' if run['world_size'] != 1 else ''} "
             f"({run['device_name']}" + (f", {run['backend']}" if run["backend"] else "")
             + ")")
    return tables, outcomes, (f"computed on {where} by `rmd_lib.evaluate` on "
                              f"{run['finished']}, read from `{Path(path).name}`")


def with_costly(rows, outcomes: dict, defense, x, y, costly: dict, costly_n: int) -> list:
    """Rows read by :func:`robust_accuracy_from` for one norm, with the columns that
    :func:`rmd_lib.attack_tables.robust_accuracy_table` adds for ``costly`` attacks
    (Square, say), computed here on the first ``costly_n`` images at the largest budget.
    ``outcomes`` are that dataset's per-image outcomes from the file, x (N, C, H, W) and y
    (N,) the images they are about. The defense scores on the draws the table uses, so the
    columns are those of one in-notebook table."""
    from .attack_tables import correct, costly_columns, worst_case_with
    from .randomness import randomised

    draws = randomised(defense)

    def score(x_in, y_in):
        for d in draws:
            d.reset()
        return correct(defense, x_in, y_in)

    norm, top = rows[0]["norm"], max(r["eps"] for r in rows)
    attacks = [k for k in rows[0] if k not in ("norm", "eps", "clean", "worst case")]
    robust = torch.tensor(outcomes["clean"], dtype=torch.bool)
    for attack in attacks:
        robust &= torch.tensor(outcomes[norm][f"{top:g}"][attack], dtype=torch.bool)
    out = []
    for r in rows:
        if r["eps"] == top:
            # The table runs the costly attacks right after a scoring, so their queries
            # continue the defense's streams from there: leave them in that state.
            score(x[:1], y[:1])
            extra = costly_columns(costly, costly_n, x, y, top, norm,
                                    robust.to(x.device), score)
        else:
            extra = {"first n": costly_n, **{c: float("nan") for c in
                                             ["worst case, first n", *costly,
                                              worst_case_with(costly)]}}
        out.append({**r, **extra})
    return out


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
def _exit_after() -> tuple[int, int] | None:
    raw = os.environ.get(EXIT_AFTER_ENV)
    if not raw:
        return None
    rank, _, k = raw.partition(":")
    try:
        return int(rank), int(k)
    except ValueError:
        raise EvaluateError(f"{EXIT_AFTER_ENV} must be RANK:K, got {raw!r}.") from None


def share(n_units: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n_units`` chunks: the first n % world ranks
    take one more."""
    base, extra = divmod(n_units, world)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (rank < extra))


def main(argv=None) -> Path | None:
    """Run the command; returns the results file's path on rank 0 (None on other ranks)."""
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except EvaluateError as exc:
        raise SystemExit(f"rmd_lib.evaluate: error: {exc}") from None


def _main(args) -> Path | None:
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from .evaluation import start_run
    from .profiles import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    resume = args.resume or restarted
    P = _profile(args)
    plan = make_plan(args, P)
    if world > len(plan.units):
        raise EvaluateError(
            f"world size {world} is larger than the {len(plan.units)} chunk(s) of this run; "
            "start fewer processes (--nproc-per-node, --nnodes) or lower --chunk.")
    out = Path(args.out)
    check_existing(out, plan, resume, ignore=("weights", "device_type"))
    exit_after = _exit_after()

    try:
        dev = resolve_device(args.device)
    except ValueError as exc:
        raise EvaluateError(str(exc)) from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    distributed = world > 1
    if distributed:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=12))
    try:
        run = start_run(plan.task.replace("-", "_"), P, args.seed, dev, out)
        ctx = {"profile": P, "device": dev}
        # Rank 0 trains what the cache lacks; the others then load it.
        for turn in ((0, 1) if distributed else (0,)):
            if (rank == 0) == (turn == 0):
                if plan.task == "dip":
                    from .imagenet import imagenet_classifier, load_imagenet_images

                    clf = imagenet_classifier(args.classifier, device=dev)
                    run.record_model("classifier", clf)
                    photos = load_imagenet_images(args.images, size=P.dip_size,
                                                  n=args.first + plan.settings["n"],
                                                  data_dir=args.data_dir)
                    if len(photos.x) < args.first + plan.settings["n"]:
                        raise EvaluateError(
                            f"{photos.source} has {len(photos.x)} images; images "
                            f"{args.first} to {args.first + plan.settings['n']} were asked "
                            "for. Lower --count or --first.")
                    ctx.update(classifier=clf, photos=photos)
                    run.data_sources["imagenet"] = photos.source
                    models = {"classifier": clf}
                else:
                    ctx["setups"] = load_setups(args, P, run, plan.settings["datasets"])
                    models = {f"{k}_{n}": m for n, s in ctx["setups"].items()
                              for k, m in (("classifier", s.classifier), ("generator", s.G))}
            if distributed:
                dist.barrier()
        plan.settings["weights"] = {k: weights_sha256(m) for k, m in sorted(models.items())}
        plan.settings["device_type"] = dev.type
        # Now with the models' digests; every rank checks before any rank writes a chunk
        # (the first check has already refused chunks without --resume).
        check_existing(out, plan, resume=True)
        if distributed:
            dist.barrier()

        mine = share(len(plan.units), rank, world)
        payloads, done = [], 0
        bar = tqdm(mine, desc=f"{plan.task} (rank 0 of {world})", disable=rank != 0)
        for i in bar:
            unit = plan.units[i]
            path = chunk_path(out, plan.task, unit)
            record = read_chunk(path) if path.exists() else None
            if path.exists() and record is None:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                print(f"rank {rank}: {path} is corrupted (its checksum does not match its "
                      f"content); moved to {aside.name} and computing the chunk again",
                      file=sys.stderr)
            if record is not None:
                payloads.append(record["payload"])
                continue
            with run.timer("chunks"):
                payload = json.loads(json.dumps(compute_chunk(plan, ctx, unit)))
            write_chunk(path, plan.settings, unit, payload)
            payloads.append(payload)
            done += 1
            if exit_after and exit_after == (rank, done):
                print(f"rank {rank}: {EXIT_AFTER_ENV} stops this rank after {done} chunk(s)",
                      file=sys.stderr)
                sys.stderr.flush()
                os._exit(17)
        if distributed:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object((rank, payloads), gathered, dst=0)
        else:
            gathered = [(0, payloads)]
        if rank != 0:
            return None
        ordered = [p for _, part in sorted(gathered, key=lambda t: t[0]) for p in part]
        headline, tables = merge(plan, ordered)
        tables["evaluate"] = {
            "task": plan.task, "settings": plan.settings, "world_size": world,
            "backend": (dist.get_backend() if distributed else None),
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                            else "cpu"),
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"),
            "chunks": len(plan.units)}
        run.chapter = plan.task
        return run.write(headline, **tables)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
