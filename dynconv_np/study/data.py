"""The digits data set (scikit-learn's bundled copy: nothing is downloaded).

1797 grey images of 8x8 pixels (values 0..16), classes 0..9, upsampled to 16x16
(bilinear, :func:`scipy.ndimage.zoom`) and standardised with the training set's mean and
standard deviation. The train/test split is stratified and fixed (``split_seed``), so
every variant and seed sees the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Digits", "load_digits16", "missing_dependencies"]


def missing_dependencies() -> list[str]:
    """The study's optional packages that are not installed (``[]`` when all are there)."""
    import importlib.util

    missing = []
    for mod, name in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ValueError:                                    # sys.modules[mod] is None: blocked
            found = False
        if not found:
            missing.append(name)
    return missing


@dataclass(frozen=True)
class Digits:
    """Train and test arrays: x ``(N, 1, 16, 16)`` (the dtype asked for), y ``(N,)`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return 10


def load_digits16(test_fraction: float = 0.2, split_seed: int = 0, limit: int | None = None,
                  dtype=np.float32) -> Digits:
    """The digits at 16x16, standardised, split into train and test.

    Parameters
    ----------
    test_fraction : float
        Share of the 1797 images held out (stratified by class).
    split_seed : int
        Seed of the split.
    limit : int, optional
        Keep only the first `limit` training images (quick runs, tests).
    dtype : float32 or float64
    """
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = zoom(d.images.astype(np.float64) / 16.0, (1, 2, 2), order=1)[:, None]      # (1797, 1, 16, 16)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=split_seed)
    if limit is not None:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    mean, std = x_tr.mean(), x_tr.std()
    prep = lambda a: np.ascontiguousarray((a - mean) / std, dtype=dtype)
    return Digits(prep(x_tr), y_tr, prep(x_te), y_te)
