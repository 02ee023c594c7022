"""Classifiers and generators; every generator maps z (B, latent_dim) to images in [0, 1]."""
from .began import BEGANDiscriminator, BEGANGenerator
from .classifier import MnistClassifier
from .dip import DIPNet
from .gan import WGANCritic, WGANGenerator
from .substitute import Encoder, SubstituteNet
from .vae import VAE, VAEDecoder

__all__ = ["MnistClassifier", "VAE", "VAEDecoder", "WGANGenerator", "WGANCritic", "SubstituteNet", "Encoder", "DIPNet",
           "BEGANGenerator", "BEGANDiscriminator"]
