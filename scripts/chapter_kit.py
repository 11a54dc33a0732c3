"""What every chapter generator (scripts/build_chNN.py) shares: cell builders, the Colab setup cell, the writer.

A generator reads like the notebook it writes::

    from chapter_kit import Chapter

    ch = Chapter()
    md, code = ch.md, ch.code
    md(r'''# 1 · A chapter ...''')
    ch.setup(r'''import torch
    from diffedu.utils import setup, show_source''')
    ...
    ch.write("chapters/01_ddpm.ipynb")

Every chapter's first code cell is the same Colab setup (clone the repository, install diffedu with Colab's own
torch, point DIFFEDU_DATA at the shipped data), then the chapter's imports, then ``cfg = setup(seed=0)``.
"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

COLAB_SETUP = r"""
# Setup: inside Colab, fetch the book's repository and install diffedu (Colab's own torch is kept).
import os, sys
if "google.colab" in sys.modules:
    !git clone -q --depth 1 https://github.com/diffedu/diffedu /content/diffedu
    %pip install -q /content/diffedu
    os.environ["DIFFEDU_DATA"] = "/content/diffedu/data"
""".strip("\n")

SETUP_CALL = r"""
cfg = setup(seed=0)  # seeds everything, picks cuda / mps / cpu, sets the plot style; DIFFEDU_FULL=1 for full mode
device = cfg.device
""".strip("\n")


class Chapter:
    """The cells of one chapter notebook, in order."""

    def __init__(self):
        self.cells = []

    def md(self, source: str) -> None:
        self.cells.append(new_markdown_cell(source.strip("\n")))

    def code(self, source: str) -> None:
        self.cells.append(new_code_cell(source.strip("\n")))

    def setup(self, imports: str, extra: str = "") -> None:
        """The setup cell: the Colab block, the chapter's ``imports``, ``cfg = setup(seed=0)``, the chapter's
        ``extra`` lines, and ``cfg`` (shown as the cell's output)."""
        extra = extra.strip("\n") + "\n" if extra.strip() else ""
        self.code(COLAB_SETUP + "\n\n" + imports.strip("\n") + "\n\n" + SETUP_CALL + "\n" + extra + "cfg")

    def write(self, path: str) -> None:
        nb = new_notebook(cells=self.cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "colab": {"provenance": []},
        })
        nbformat.write(nb, path)
        print("wrote", path, "with", len(self.cells), "cells")
