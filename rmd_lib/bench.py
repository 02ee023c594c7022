"""Benchmarks (not tests): speed measured together with quality.

``python -m rmd_lib.bench projection`` projects held-out MNIST digits through the trained
VAE decoder and prints, for each method, images per second and the median and 90th-percentile
per-pixel MSE of the best restart:

(a) the library's batched projection at Defense-GAN's setting (L=200, R=10, momentum SGD);
(b) the same optimiser as a Python loop per image and per restart (timed on a few images);
(c) ART's DefenseGAN/InverseGAN approach: SciPy L-BFGS-B per image, one random start;
(d) the library's default projection (Adam, pruned restarts, early stopping).

``python -m rmd_lib.bench minmax`` runs the overpowered min-max search on the trained MNIST
VAE and classifier: 256 pairs as one batch against a Python loop over single pairs (the
authors' code), with the same steps, and prints pairs per second and the share of valid,
differently classified pairs of each.

``python -m rmd_lib.bench dip`` fits the Deep Image Prior to a few of the offline ImageNet
photos, all at once (one network per image, batched) and as a Python loop of single fits
with the same steps and seeds, and prints images per minute of each and the final MSEs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import load_dataset
from .profiles import get_profile, resolve_device
from .projection import DEFENSE_GAN, project
from .training import pretrained_or_train

__all__ = ["bench_projection", "bench_minmax", "bench_dip", "projection_loop", "projection_lbfgs", "main"]


def projection_loop(G, x, steps=200, restarts=10, lr=10.0, momentum=0.7, decay_at=0.8,
                    decay=0.1, seed=0) -> torch.Tensor:
    """Method (b): one image and one restart at a time with ``torch.optim.SGD``; best MSE per image."""
    g = torch.Generator().manual_seed(seed)
    dev = next(G.parameters()).device
    best = []
    for xi in x:
        best_i = float("inf")
        for _ in range(restarts):
            z = G.sample_latent(1, generator=g).to(dev).requires_grad_(True)
            opt = torch.optim.SGD([z], lr=lr, momentum=momentum)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(decay_at * steps)], gamma=decay)
            for _ in range(steps):
                loss = (G(z)[0] - xi).pow(2).mean()
                best_i = min(best_i, loss.item())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        best.append(best_i)
    return torch.tensor(best)


def projection_lbfgs(G, x, max_iter=200, seed=0) -> torch.Tensor:
    """Method (c): SciPy L-BFGS-B per image from one random start, at most ``max_iter``
    iterations, as ART's DefenseGAN/InverseGAN preprocessors do; best MSE per image."""
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(seed)
    dev = next(G.parameters()).device
    out = []
    for xi in x:
        def fun(z_np, xi=xi):
            z = torch.from_numpy(z_np).float().to(dev).view(1, -1).requires_grad_(True)
            loss = (G(z)[0] - xi).pow(2).mean()
            grad, = torch.autograd.grad(loss, z)
            return loss.item(), grad.double().cpu().numpy().ravel()

        z0 = G.sample_latent(1, generator=g).double().numpy().ravel()
        res = minimize(fun, z0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
        out.append(float(res.fun))
    return torch.tensor(out)


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def _standard_mnist(device, data_dir, cache_dir, seed):
    """The device, MNIST and the VAE decoder of the ``standard`` profile (from the cache)."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    prof = get_profile("standard")
    data = load_dataset("mnist", data_dir, n_train=prof.n_train, n_test=prof.n_test, verbose=False)
    G = pretrained_or_train("vae", data, prof, seed=seed, device=dev, cache_dir=cache_dir,
                            verbose=False).decoder
    return dev, data, G


def bench_projection(n: int = 200, n_loop: int = 3, device="auto", data_dir=None,
                     cache_dir=None, seed: int = 0) -> dict:
    """Run methods (a)-(d) on ``n`` held-out digits ((b) on ``n_loop``); returns the rows."""
    dev, data, G = _standard_mnist(device, data_dir, cache_dir, seed)
    x = data.x_test[:n].to(dev)
    # Warm-up: allocator, kernels, and torch.optim's one-off imports (seconds, once a process).
    project(G, x[:8], steps=5, restarts=2)
    projection_loop(G, x[:1], steps=2, restarts=1)

    rows = {}
    r, t = _timed(lambda: project(G, x, steps=200, restarts=10, seed=seed, **DEFENSE_GAN))
    rows["(a) batched, Defense-GAN setting"] = (n / t, r.mse.cpu())
    mse_b, t = _timed(lambda: projection_loop(G, x[:n_loop], seed=seed))
    rows["(b) Python loop per image and restart"] = (n_loop / t, mse_b)
    mse_c, t = _timed(lambda: projection_lbfgs(G, x, seed=seed))
    rows["(c) L-BFGS-B per image (ART)"] = (n / t, mse_c)
    r, t = _timed(lambda: project(G, x, steps=200, restarts=10, seed=seed))
    rows["(d) library default"] = (n / t, r.mse.cpu())

    table = {k: {"images_per_s": ips, "median_mse": float(m.median()),
                 "p90_mse": float(m.quantile(0.9)), "n_images": len(m)}
             for k, (ips, m) in rows.items()}
    a, b, c, d = (table[k] for k in rows)
    goals = {
        "default median MSE within 5% of (a)": d["median_mse"] <= 1.05 * a["median_mse"],
        "default >= 10x (b) throughput": d["images_per_s"] >= 10 * b["images_per_s"],
        "default >= 2x (c) throughput": d["images_per_s"] >= 2 * c["images_per_s"],
    }
    return {"device": str(dev), "threads": torch.get_num_threads(), "n": n, "methods": table,
            "goals": goals, "speedup_vs_a": d["images_per_s"] / a["images_per_s"]}


def bench_minmax(n: int = 256, n_loop: int = 64, eps: float = 2.0, steps: int = 200,
                 device="auto", data_dir=None, cache_dir=None, seed: int = 0) -> dict:
    """Batched :func:`minmax_pairs` on ``n`` pairs against a loop over ``n_loop`` single pairs,
    both with ``steps`` steps and early stopping; returns pairs/s and success rates."""
    from .attacks import minmax_pairs

    dev, data, G = _standard_mnist(device, data_dir, cache_dir, seed)
    C = pretrained_or_train("classifier", data, get_profile("standard"), seed=seed, device=dev,
                            cache_dir=cache_dir, verbose=False)
    minmax_pairs(G, C, eps, n=4, steps=3)  # warm-up
    batched, t_b = _timed(lambda: minmax_pairs(G, C, eps, n=n, steps=steps, seed=seed))
    # the loop runs the batch's first n_loop pairs, each from its own stream
    singles, t_l = _timed(lambda: [minmax_pairs(G, C, eps, n=1, steps=steps, seed=seed, indices=[i])
                                   for i in range(n_loop)])
    rate_b = float(batched.success.float().mean())
    rate_l = float(torch.cat([r.success for r in singles]).float().mean())
    speedup = (n / t_b) / (n_loop / t_l)
    # "The same rate": within two binomial standard errors of the loop's, which is the noisier.
    tol = 2 * max(math.sqrt(max(rate_l * (1 - rate_l), 1e-4) / n_loop), 1 / n_loop)
    return {"device": str(dev), "threads": torch.get_num_threads(), "eps": eps, "steps": steps,
            "batched": {"pairs": n, "seconds": t_b, "pairs_per_s": n / t_b, "success": rate_b},
            "loop": {"pairs": n_loop, "seconds": t_l, "pairs_per_s": n_loop / t_l, "success": rate_l},
            "speedup": speedup,
            "goals": {"batched >= 3x the loop's pairs/s": speedup >= 3,
                      f"success rates within {tol:.3f}": abs(rate_b - rate_l) <= tol}}


def bench_dip(n: int = 4, size: int = 64, steps: int = 100, width: int = 32, depth: int = 4,
              device="auto", seed: int = 0) -> dict:
    """Batched :func:`deep_image_prior` on ``n`` offline ImageNet photos (size x size) against
    a loop of single fits with the same steps and seeds; returns images per minute of each."""
    from .dip import deep_image_prior
    from .imagenet import load_imagenet_images

    dev = resolve_device(device)
    x = load_imagenet_images("offline", size=size, n=n).x.to(dev)
    opts = dict(width=width, depth=depth)
    deep_image_prior(x[:2], 3, **opts)  # warm-up: allocator and kernels
    batched, t_b = _timed(lambda: deep_image_prior(x, steps, seed=seed, **opts))
    singles, t_l = _timed(lambda: [deep_image_prior(x[i:i + 1], steps, seed=seed, indices=[i], **opts)
                                   for i in range(n)])
    mse_b = batched.mse[-1]
    mse_l = torch.cat([r.mse[-1] for r in singles])
    ratio = t_l / t_b
    return {"device": str(dev), "threads": torch.get_num_threads(), "n": n, "size": size,
            "steps": steps, "width": width, "depth": depth,
            "batched": {"seconds": t_b, "images_per_min": 60 * n / t_b, "mse": mse_b.tolist()},
            "loop": {"seconds": t_l, "images_per_min": 60 * n / t_l, "mse": mse_l.tolist()},
            "speedup": ratio,
            "goals": {"batched no slower than the loop": ratio >= 1.0}}


def _print_goals(report: dict) -> None:
    for goal, ok in report["goals"].items():
        print(f"[{'met' if ok else 'NOT met'}] {goal}")


def _print_dip(report: dict) -> None:
    print(f"Deep Image Prior on {report['n']} offline ImageNet photos ({report['size']}x{report['size']}), "
          f"{report['steps']} steps, width {report['width']}, depth {report['depth']}, "
          f"device {report['device']}, {report['threads']} threads")
    for k in ("batched", "loop"):
        r = report[k]
        print(f"{k:8s} {r['seconds']:7.1f} s: {r['images_per_min']:7.1f} images/min, "
              f"final MSE {', '.join(f'{m:.4f}' for m in r['mse'])}")
    print(f"speed-up {report['speedup']:.2f}x")
    _print_goals(report)


def _print_minmax(report: dict) -> None:
    print(f"min-max pairs on the MNIST VAE, eps {report['eps']}, {report['steps']} steps, "
          f"device {report['device']}, {report['threads']} threads")
    for k in ("batched", "loop"):
        r = report[k]
        print(f"{k:8s} {r['pairs']:4d} pairs in {r['seconds']:7.1f} s: {r['pairs_per_s']:7.2f} pairs/s, "
              f"valid and differently classified {r['success']:.3f}")
    print(f"speed-up {report['speedup']:.1f}x")
    _print_goals(report)


def _print(report: dict) -> None:
    print(f"projection of {report['n']} held-out MNIST digits, VAE decoder, "
          f"device {report['device']}, {report['threads']} threads")
    print(f"{'method':42s} {'img/s':>8s} {'median MSE':>11s} {'p90 MSE':>9s}")
    for name, m in report["methods"].items():
        print(f"{name:42s} {m['images_per_s']:8.1f} {m['median_mse']:11.5f} {m['p90_mse']:9.5f}"
              + ("" if m["n_images"] == report["n"] else f"   ({m['n_images']} images)"))
    _print_goals(report)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmd_lib.bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("projection", help="batched projection against a loop and L-BFGS-B")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--n-loop", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the report here")
    m = sub.add_parser("minmax", help="batched min-max pairs against a loop over single pairs")
    m.add_argument("--n", type=int, default=256)
    m.add_argument("--n-loop", type=int, default=64)
    m.add_argument("--eps", type=float, default=2.0)
    m.add_argument("--steps", type=int, default=200)
    m.add_argument("--device", default="auto")
    m.add_argument("--json", type=Path, help="also write the report here")
    d = sub.add_parser("dip", help="batched Deep Image Prior against a loop over single fits")
    d.add_argument("--n", type=int, default=4)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--steps", type=int, default=100)
    d.add_argument("--width", type=int, default=32)
    d.add_argument("--depth", type=int, default=4)
    d.add_argument("--device", default="auto")
    d.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    if args.what == "dip":
        report = bench_dip(args.n, args.size, args.steps, args.width, args.depth, args.device)
        _print_dip(report)
    elif args.what == "minmax":
        report = bench_minmax(args.n, args.n_loop, args.eps, args.steps, args.device)
        _print_minmax(report)
    else:
        report = bench_projection(args.n, args.n_loop, args.device)
        _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
