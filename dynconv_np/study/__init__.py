"""The digits study: the same small CNN with every layer of :mod:`dynconv_np.nn`.

``python -m dynconv_np study`` (see ``docs/study.md``) trains a small CNN on
scikit-learn's bundled handwritten digits (8x8 images upsampled to 16x16; nothing is
downloaded) with a static convolution, its equal-parameter static mixture, and each
dynamic layer, over several seeds, and writes to an output folder a Markdown table
(parameters, multiply-adds, test accuracy mean +- sd, seconds per epoch), training curves
and routing plots (attention entropy over training, per-class attention).

Needs the optional extra ``dynconv_np[study]`` (scikit-learn and matplotlib).

- :mod:`.data`: the digits, upsampled and standardised, with a fixed stratified split.
- :mod:`.models`: the variant registry (layers other modules add appear when present).
- :mod:`.run`: training and measuring one variant for one seed, and the whole study.
- :mod:`.report`: the Markdown table and the JSON record; :mod:`.plots`: the figures.
- :mod:`.cli`: the command.
"""

from .models import VARIANTS, Variant, available_variants, build_model
from .run import Settings, run_study

__all__ = ["VARIANTS", "Variant", "available_variants", "build_model", "Settings", "run_study"]
