"""The study's CNN and its variants.

Every variant is the same network with its 3x3 convolutions replaced (the stem stays a
static convolution, as in the papers)::

    Conv2d(1, 16, 3, padding=1) - BN - ReLU                  stem, static for every variant
    LAYER(16, 32, stride 2)     - BN - ReLU
    LAYER(32, 32, stride 1)     - BN - ReLU
    GlobalAvgPool2d - Linear(32, 10)

:data:`VARIANTS` lists them in table order. A variant with ``requires`` set is included
only when :mod:`dynconv_np.nn` has that layer (layers added by other parts of the
package appear here by themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import nn

__all__ = ["Variant", "VARIANTS", "available_variants", "build_model", "WIDTHS"]

#: channels of the stem and the two replaced layers
WIDTHS = (16, 32, 32)


@dataclass(frozen=True)
class Variant:
    """One row of the study.

    Attributes
    ----------
    name : str
        Its name on the command line (``--variants``).
    label : str
        Its name in the table and plots.
    layer : callable
        ``layer(in_channels, out_channels, stride) -> Module``: one replaced 3x3 conv.
    anneal : bool
        Anneal DynamicConv2d-style temperatures (30 -> 1 over the first half of training,
        per iteration).
    requires : str, optional
        The :mod:`dynconv_np.nn` attribute the variant needs.
    """

    name: str
    label: str
    layer: Callable[[int, int, int], nn.Module]
    anneal: bool = False
    requires: str | None = None

    @property
    def available(self) -> bool:
        return self.requires is None or hasattr(nn, self.requires)


def _per_pixel(cls_name: str) -> Callable[[int, int, int], nn.Module]:
    # depthwise per-pixel filtering at the stride, then a 1x1 conv for the channels
    def make(c: int, o: int, s: int) -> nn.Module:
        return nn.Sequential(getattr(nn, cls_name)(c, 3, stride=s, padding=1), nn.Conv2d(c, o, 1))

    return make


VARIANTS: list[Variant] = [
    Variant("conv", "Conv2d", lambda c, o, s: nn.Conv2d(c, o, 3, s, 1)),
    Variant("mixture", "MixtureConv2d (K=4, static)", lambda c, o, s: nn.MixtureConv2d(c, o, 3, s, 1)),
    Variant("condconv", "CondConv2d (E=4)", lambda c, o, s: nn.CondConv2d(c, o, 3, s, 1)),
    Variant("dynamic", "DynamicConv2d (K=4, tau 30->1)", lambda c, o, s: nn.DynamicConv2d(c, o, 3, s, 1),
            anneal=True),
    Variant("dynamic_fixed", "DynamicConv2d (K=4, tau=1)",
            lambda c, o, s: nn.DynamicConv2d(c, o, 3, s, 1, temperature=1.0)),
    Variant("dcd", "DCDConv2d", lambda c, o, s: nn.DCDConv2d(c, o, 3, s)),
    Variant("atom", "AtomConv2d (width 16)", lambda c, o, s: nn.AtomConv2d(c, o, 3, s, hidden_channels=16)),
    Variant("odconv", "ODConv2d (K=4)", lambda c, o, s: nn.ODConv2d(c, o, 3, s, 1), anneal=True,
            requires="ODConv2d"),
    Variant("ddf", "DDFConv2d + 1x1", _per_pixel("DDFConv2d"), requires="DDFConv2d"),
    Variant("involution", "Involution2d + 1x1", _per_pixel("Involution2d"), requires="Involution2d"),
]


def available_variants() -> list[Variant]:
    """The variants whose layers exist in this installation, in table order."""
    return [v for v in VARIANTS if v.available]


def build_model(variant: Variant, seed: int) -> nn.Sequential:
    """The study's CNN (float32) with `variant`'s layers, initialised after ``nn.manual_seed(seed)``."""
    nn.manual_seed(seed)
    c0, c1, c2 = WIDTHS
    layers = [nn.Conv2d(1, c0, 3, padding=1), nn.BatchNorm2d(c0), nn.ReLU()]
    for c, o, s in ((c0, c1, 2), (c1, c2, 1)):
        layers += [variant.layer(c, o, s), nn.BatchNorm2d(o), nn.ReLU()]
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c2, 10)]
    return nn.Sequential(*layers)
