"""Losses: the mean softmax cross-entropy with its pullback."""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op


@op("logits", "target")
def softmax_cross_entropy(logits: np.ndarray, target: np.ndarray):
    """Mean softmax cross-entropy of logits against target distributions.

    Parameters
    ----------
    logits : ndarray (N, K)
    target : ndarray (N, K)
        Probabilities per sample, rows summing to 1 (one-hot rows for class labels), of
        logits' dtype and device.

    Returns
    -------
    loss : NumPy scalar of logits' dtype (on the host)
        ``-sum(target * log_softmax(logits)) / N``, the log-sum-exp taken with the row
        maximum subtracted. pullback(dloss) takes a real number (or a 0-d host array) and
        gives ``(dlogits, dtarget)``, both (N, K): ``dloss * (softmax(logits) - target) / N``
        (the rows of target summing to 1) and ``-dloss * log_softmax(logits) / N``.
    """
    dtype, device = _args.check_arrays({"logits": logits, "target": target})
    _args.check_ndim("logits", logits, 2, "(N, K)")
    N, K = logits.shape
    if N < 1 or K < 1:
        raise ValueError(f"logits must have at least one sample and one class, got shape {tuple(logits.shape)}")
    _args.check_shape("target", target, (N, K), "(N, K) probabilities")
    be = backends.get(device)

    logp = be.log_softmax(logits)                             # (N, K), max-subtracted
    p = be.exp(logp)                                          # softmax(logits)
    loss = -be.total(be.mul(target, logp)) / N

    def pullback(dloss):
        d = dtype.type(_args.real_scalar("dloss", dloss))
        return be.scale(be.sub(p, target), d / N), be.scale(logp, -d / N)

    return loss, pullback
