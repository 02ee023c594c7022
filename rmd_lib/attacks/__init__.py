"""Attacks with one signature: ``attack(model, x, y, eps, **options) -> x_adv`` in [0, 1]."""
from .adaptive import BPDA, generator_jacobian
from .autoencoder import EncoderSubstitute, train_encoder
from .cw import cw_l2
from .first_order import NORMS, bim, fgsm, input_gradient, pgd, project_ball
from .latent import latent_space_attack
from .minmax import DIVERGENCES, MinMaxPairs, divergence, minmax_pairs
from .square import square_attack, square_attack_with_stats
from .substitute import Substitute, jacobian_augment, train_substitute
from .unrolled import UnrolledINC, unrolled_project

# The budget-bound first-order attacks, which use the eps-ball they are given. Carlini-Wagner
# (cw_l2) has the same signature but minimises the distance instead; BPDA, UnrolledINC and
# EncoderSubstitute turn a defense into a differentiable model that any of them can attack;
# latent_space_attack takes the defense itself as its model. square_attack needs no gradient:
# it queries any model, the defense itself included, for its logits only.
ATTACKS = {"fgsm": fgsm, "bim": bim, "pgd": pgd}

__all__ = ["ATTACKS", "NORMS", "fgsm", "bim", "pgd", "cw_l2", "BPDA", "project_ball",
           "input_gradient", "generator_jacobian", "latent_space_attack", "UnrolledINC", "unrolled_project",
           "train_substitute", "jacobian_augment", "Substitute", "train_encoder",
           "EncoderSubstitute", "square_attack", "square_attack_with_stats", "minmax_pairs", "MinMaxPairs", "divergence", "DIVERGENCES"]
