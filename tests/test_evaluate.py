"""``python -m rmd_lib.evaluate``: two torchrun ranks give one process's file, a killed rank
resumes, a corrupted chunk is redone, and bad options say what is wrong.

Smoke sizes cut further (a few images, two or three attack steps, models trained for an
epoch or two into a temporary cache), so the torchrun launches dominate the time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rmd_lib import evaluate

ROOT = Path(__file__).resolve().parent.parent

SMALL = ["--profile", "smoke", "--set", "n_train=300", "--set", "classifier_epochs=1",
         "--set", "vae_epochs=2", "--set", "proj_steps=5", "--set", "attack_proj=[3,1]",
         "--set", "adaptive_steps=2", "--set", "latent_steps=3", "--set", "minmax_steps=3",
         "--device", "cpu", "--no-download"]
ROBUST = ["--task", "robust-accuracy", "--count", "8", "--chunk", "2", "--eps-linf", "0.3",
          "--eps-l2", "3"]
PROJECTION = ["--task", "projection", "--count", "12", "--chunk", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The models of SMALL, trained once into a cache the whole module shares."""
    folder = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("warmup")
    _inprocess(PROJECTION[:2] + ["--count", "1", "--out", str(out)], folder)
    return folder


@contextmanager
def _one_thread():
    # torchrun starts each rank with one thread; the reference gets the same arithmetic.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inprocess(argv, cache_dir) -> Path:
    with _one_thread():
        return evaluate.main([*argv, *SMALL, "--cache-dir", str(cache_dir)])


def _torchrun(argv, cache_dir, nproc=2, extra_env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "1",
        **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "rmd_lib.evaluate", *argv, *SMALL,
           "--cache-dir", str(cache_dir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _tables(path: Path) -> dict:
    res = json.loads(Path(path).read_text())
    tables = dict(res["tables"])
    run = tables.pop("evaluate")
    return {"headline": res["headline"], "tables": tables, "settings": run["settings"],
            "world_size": run["world_size"], "profile": res["profile"]}


def _check(proc):
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "it/s]" not in ln]
    # the failing rank's own traceback comes before torchrun's summary
    cause = [ln for ln in lines if "Error" in ln or "error:" in ln or ln.startswith("  File")]
    assert proc.returncode == 0, "\n".join(cause[:60])


def test_two_ranks_equal_one_process_projection(cache, tmp_path):
    one = _tables(_inprocess([*PROJECTION, "--out", str(tmp_path / "one")], cache))
    _check(_torchrun([*PROJECTION, "--out", str(tmp_path / "two")], cache))
    two = _tables(tmp_path / "two" / "projection.json")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["tables"]["per_image"]["mnist"]["mse"]) == 12
    assert one["tables"] == two["tables"] and one["headline"] == two["headline"]
    assert one["settings"] == two["settings"]


def test_two_ranks_equal_one_process_robust_accuracy_and_resume(cache, tmp_path):
    one = _tables(_inprocess([*ROBUST, "--out", str(tmp_path / "one")], cache))
    _check(_torchrun([*ROBUST, "--out", str(tmp_path / "two")], cache))
    assert _tables(tmp_path / "two" / "robust-accuracy.json")["tables"] == one["tables"]
    per_image = one["tables"]["per_image"]["mnist"]
    assert len(per_image["clean"]) == 8
    assert set(per_image["l2"]["3"]) == set(evaluate.ATTACKS.values())
    rows = one["tables"]["robust_accuracy"]["mnist"]["linf"]
    assert rows[0]["worst case"] <= min(v for k, v in rows[0].items() if k not in ("norm", "eps"))

    # Rank 1 dies after its first chunk: no results file, and its chunk and rank 0's stay.
    killed = tmp_path / "killed"
    proc = _torchrun([*ROBUST, "--out", str(killed)], cache,
                     extra_env={evaluate.EXIT_AFTER_ENV: "1:1"})
    assert proc.returncode != 0
    assert not (killed / "robust-accuracy.json").exists()
    left = sorted((killed / "chunks" / "robust-accuracy").glob("*.json"))
    assert 1 <= len(left) < 4 and "mnist-0000004-0000006.json" in [p.name for p in left]
    stamps = {p.name: p.stat().st_mtime_ns for p in left}
    # The same command again, with --resume: the finished chunks are kept, the rest computed.
    _check(_torchrun([*ROBUST, "--out", str(killed), "--resume"], cache))
    assert _tables(killed / "robust-accuracy.json")["tables"] == one["tables"]
    assert {p: (killed / "chunks" / "robust-accuracy" / p).stat().st_mtime_ns
            for p in stamps} == stamps


def test_two_ranks_equal_one_process_pairs_and_dip(cache, tmp_path):
    pairs = ["--task", "pairs", "--count", "6", "--chunk", "3", "--budgets", "1,3"]
    one = _tables(_inprocess([*pairs, "--out", str(tmp_path / "one")], cache))
    _check(_torchrun([*pairs, "--out", str(tmp_path / "two")], cache))
    assert _tables(tmp_path / "two" / "pairs.json")["tables"] == one["tables"]
    assert [r["eps"] for r in one["tables"]["pairs"]["mnist"]] == [1.0, 3.0]
    try:
        from rmd_lib.imagenet import imagenet_classifier
        imagenet_classifier("efficientnet_lite0")
    except Exception as exc:  # the offline ImageNet classifier is an optional extra
        pytest.skip(f"no offline ImageNet classifier: {exc}")
    dip = ["--task", "dip", "--count", "2", "--chunk", "1", "--budgets", "0.0314",
           "--classifier", "efficientnet_lite0", "--set", "dip_steps=6",
           "--set", "dip_record=[3,6]", "--set", "dip_stop=6"]
    one = _tables(_inprocess([*dip, "--out", str(tmp_path / "one")], cache))
    _check(_torchrun([*dip, "--out", str(tmp_path / "two")], cache))
    assert _tables(tmp_path / "two" / "dip.json")["tables"] == one["tables"]
    assert [r["steps"] for r in one["tables"]["dip_curve"]] == [3, 6]


@pytest.mark.parametrize("profile", ["standard", "colab"])
def test_robust_accuracy_budgets_default_to_the_profiles_as_chapter_5(profile):
    from rmd_lib.profiles import get_profile

    args = evaluate.parser().parse_args(["--profile", profile, "--device", "cpu", "--task",
                                         "robust-accuracy", "--out", "x"])
    P = get_profile(profile, "cpu")
    plan = evaluate.make_plan(args, P)
    assert plan.settings["eps"] == {"linf": list(P.adaptive_eps_linf),
                                    "l2": list(P.adaptive_eps_l2)}
    assert len(P.adaptive_eps_linf) == (2 if profile == "standard" else 3)


def test_chapter_reads_robust_accuracy_only_when_it_matches(cache, tmp_path):
    path = _inprocess([*ROBUST, "--out", str(tmp_path)], cache)
    P = evaluate._profile(evaluate.parser().parse_args([*SMALL, "--task", "x", "--out", "x"]))
    eps, attacks = {"linf": [0.3], "l2": [3.0]}, list(evaluate.ATTACKS.values())
    tables, outcomes, origin = evaluate.robust_accuracy_from(path, P, 0, ["mnist"], eps,
                                                             attacks, 8)
    assert tables == _tables(path)["tables"]["robust_accuracy"]
    assert outcomes == _tables(path)["tables"]["per_image"]
    assert origin.startswith("computed on 1 process (cpu) by `rmd_lib.evaluate` on ")
    with pytest.raises(ValueError, match="images: 8 in the file, 24 here"):
        evaluate.robust_accuracy_from(path, P, 0, ["mnist"], eps, attacks, 24)
    with pytest.raises(ValueError, match=r"eps: .* in the file"):
        evaluate.robust_accuracy_from(path, P, 0, ["mnist"], {"linf": [0.1]}, attacks, 8)
    with pytest.raises(ValueError, match="profile 'smoke-custom', seed 0; this run has "
                                         "profile 'smoke'"):
        evaluate.robust_accuracy_from(path, P.with_(name="smoke"), 0, ["mnist"], eps,
                                      attacks, 8)
    with pytest.raises(ValueError, match="holds task 'projection'"):
        other = _inprocess([*PROJECTION, "--out", str(tmp_path / "p")], cache)
        evaluate.robust_accuracy_from(other, P, 0, ["mnist"], eps, attacks, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.robust_accuracy_from(tmp_path / "none.json", P, 0, ["mnist"], eps, attacks, 8)


def test_corrupted_chunk_is_detected_and_redone(cache, tmp_path, capsys):
    out = tmp_path / "run"
    first = _tables(_inprocess([*PROJECTION, "--out", str(out)], cache))
    chunk = out / "chunks" / "projection" / "mnist-0000003-0000006.json"
    record = json.loads(chunk.read_text())
    record["payload"]["mse"][0] += 0.5  # a changed number: the checksum no longer matches
    chunk.write_text(json.dumps(record))
    again = _tables(_inprocess([*PROJECTION, "--out", str(out), "--resume"], cache))
    assert "corrupted" in capsys.readouterr().err
    assert (chunk.parent / (chunk.name + ".corrupt")).exists()  # kept aside, not deleted
    assert evaluate.read_chunk(chunk) is not None
    assert again["tables"] == first["tables"]


def _error(argv, cache_dir) -> str:
    with pytest.raises(SystemExit) as info:
        _inprocess(argv, cache_dir)
    return str(info.value)


def test_bad_options_give_clear_errors(cache, tmp_path, monkeypatch):
    out = ["--out", str(tmp_path / "run")]
    assert "unknown task 'robustness'" in _error(["--task", "robustness", *out], cache)
    msg = _error([*PROJECTION, *out, "--classifier-checkpoint", str(tmp_path / "nope.pth")],
                 cache)
    assert "nope.pth: no such file" in msg
    assert "unknown attack(s) ['cw']" in _error([*ROBUST, *out, "--attacks", "fgsm,cw"], cache)
    assert "is not in the cache" in _error([*PROJECTION, *out, "--no-train"],
                                           tmp_path / "empty")
    monkeypatch.setenv("WORLD_SIZE", "5")
    msg = _error([*PROJECTION, *out], cache)  # 12 images in chunks of 3: 4 chunks
    assert "world size 5 is larger than the 4 chunk(s)" in msg
    monkeypatch.delenv("WORLD_SIZE")
    _inprocess([*PROJECTION, *out], cache)
    assert "--resume to reuse them" in _error([*PROJECTION, *out], cache)
    msg = _error([*PROJECTION, *out, "--resume", "--seed", "1"], cache)
    assert "other settings" in msg and "seed: 0 in the chunks, 1 now" in msg
    assert len(list((tmp_path / "run" / "chunks" / "projection").glob("*.json"))) == 4


def test_shares_are_contiguous_and_cover_every_chunk():
    for n_units in (1, 4, 7):
        for world in range(1, n_units + 1):
            shares = [list(evaluate.share(n_units, r, world)) for r in range(world)]
            assert sum(shares, []) == list(range(n_units))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_costly_columns_on_read_tables_equal_the_tables_own(cache, tmp_path):
    """with_costly adds, to the tables read from a file, the costly-attack columns that
    robust_accuracy_table computes, for a costly attack that queries the defense."""
    from rmd_lib.attack_tables import robust_accuracy_table
    from rmd_lib.evaluation import start_run

    # the last --chunk and --eps-linf win: one chunk, two budgets
    argv = [*ROBUST, "--chunk", "8", "--eps-linf", "0.2,0.3", "--out", str(tmp_path)]
    args = evaluate.parser().parse_args([*argv, *SMALL, "--cache-dir", str(cache)])
    P = evaluate._profile(args)
    run = start_run("t", P, 0, "cpu", tmp_path)
    s = evaluate.load_setups(args, P, run, ["mnist"])["mnist"]
    eps, names = {"linf": [0.2, 0.3], "l2": [3.0]}, list(evaluate.ATTACKS.values())
    x, y = s.test_images(8, "cpu")

    def costly_for(defense):  # its result depends on the defense's draws
        def attack(x, y, e, n):
            with torch.no_grad():
                push = defense(x).softmax(1)[:, :1, None, None]
            return (x + e * push).clamp(0, 1)
        return {"queries": attack}

    with _one_thread():
        defense = s.inc(P, 0)
        attacks = evaluate.attacks_for(s, P, 0, names, 0)
        own = {m: robust_accuracy_table(defense, x, y, attacks, eps[m], norm=m,
                                        costly=costly_for(defense), costly_n=5)
               for m in eps}
        path = _inprocess(argv, cache)
        read, outcomes, _ = evaluate.robust_accuracy_from(path, P, 0, ["mnist"], eps, names, 8)
        defense = s.inc(P, 0)
        added = {m: evaluate.with_costly(read["mnist"][m], outcomes["mnist"], defense, x, y,
                                         costly_for(defense), 5) for m in eps}
    assert json.dumps(added, sort_keys=True) == json.dumps(own, sort_keys=True)
    assert added["linf"][0]["queries"] != added["linf"][0]["queries"]  # NaN off the top
