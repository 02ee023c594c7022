"""Attacks with one signature: ``attack(model, x, y, eps, **options) -> x_adv`` in [0, 1]."""
from .adaptive import BPDA
from .cw import cw_l2
from .first_order import NORMS, bim, fgsm, input_gradient, pgd, project_ball

# The budget-bound first-order attacks, which use the eps-ball they are given. Carlini-Wagner
# (cw_l2) has the same signature but minimises the distance instead; BPDA wraps a defense
# into a model that any of them can attack.
ATTACKS = {"fgsm": fgsm, "bim": bim, "pgd": pgd}

__all__ = ["ATTACKS", "NORMS", "fgsm", "bim", "pgd", "cw_l2", "BPDA", "project_ball",
           "input_gradient"]
