"""rmd_lib: the library behind "The Robust Manifold Defense, hands-on"."""
__version__ = "0.1.0"
