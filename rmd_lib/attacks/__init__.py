"""Attacks with one signature: ``attack(model, x, y, eps, **options) -> x_adv`` in [0, 1]."""
from .first_order import NORMS, bim, fgsm, input_gradient, pgd, project_ball

ATTACKS = {"fgsm": fgsm, "bim": bim, "pgd": pgd}

__all__ = ["ATTACKS", "NORMS", "fgsm", "bim", "pgd", "project_ball", "input_gradient"]
