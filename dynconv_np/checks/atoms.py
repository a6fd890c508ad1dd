"""Default checks: atom_conv2d and the AtomConv2d layer (atom generator included)."""

import numpy as np

import dynconv_np as dc

from . import Case, rng


def cases():
    r = rng(4)
    x = r.standard_normal((2, 3, 6, 5))
    atoms = r.standard_normal((2, 2, 3, 3, 3, 3))              # stride 2, padding 1 -> 3x3
    coeff = r.standard_normal((4, 3, 2))
    b = r.standard_normal(4)
    xl = r.standard_normal((4, 8, 12, 12))
    atoms_l = r.standard_normal((4, 6, 5, 5, 12, 12))
    coeff_l = r.standard_normal((8, 8, 6))
    layer = dc.nn.AtomConv2d(3, 4, 3, stride=2, num_atoms=3, hidden_channels=6, dtype=np.float64, seed=0)
    xn = r.standard_normal((2, 3, 7, 6))
    return [
        Case("atom_conv2d s2 p1", dc.atom_conv2d, (x, atoms, coeff, b), dict(stride=2, padding=1),
             mode="full"),
        Case("atom_conv2d k5 8x12x12", dc.atom_conv2d, (xl, atoms_l, coeff_l, None), dict(padding=2),
             mode="projection"),
        Case("AtomConv2d layer", dc.nn.as_function(layer), (xn, *layer.params.values()), mode="projection"),
    ]
