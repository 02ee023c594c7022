"""rmd_course: the course book's machinery around the science library ``rmd_lib``.

- ``course``: the assignments' one-source releases, the autograder and the book's two audiences;
- ``gradescope``: Gradescope autograder zips and nbgrader-style folders;
- ``toys``: the tiny seeded models and data that the assignments and their tests share;
- ``report``: the reproduction report, rendered from the chapters' results files;
- ``explorers``: the chapters' live ipywidgets explorers and their static fallbacks.
"""
__version__ = "0.1.0"
