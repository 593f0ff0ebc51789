"""MiniLM on Rotten Tomatoes: full fine-tuning vs MPO + LFA (full rank, truncated) vs LoRA vs BitFit.

The ``minilm-rt`` preset of :mod:`mpokit.recipes.method_comparison`, kept under its own name::

    python -m mpokit.recipes.plm_rotten_tomatoes --out runs/plm_rt --seeds 0 1 2
    python -m mpokit.recipes.plm_rotten_tomatoes --out runs/plm_rt --aggregate-only
"""

from __future__ import annotations

import sys

from .method_comparison import main

if __name__ == "__main__":
    sys.exit(main(default_preset="minilm-rt"))
