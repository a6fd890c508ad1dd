"""The workspace bound shared by the backends: bytes one batch chunk of an op may use.

An op whose workspace grows with the batch (the CUDA conv template's column buffer,
``atom_conv2d``'s features ``Z``) runs the batch in chunks of :meth:`Workspace.chunk_size`
samples. Each backend holds one :class:`Workspace` with its own default (host memory is
plentiful, device memory less so) and exposes its two methods as
``set_workspace_bytes`` and ``chunk_size``. Chunk sizes depend on the shapes and the
bound only, never on the device or the thread count.
"""

from __future__ import annotations


class Workspace:
    """A bound, in bytes, on the workspace of one batch chunk of an op.

    Parameters
    ----------
    nbytes : int
        The initial bound (positive).
    """

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)

    def set_workspace_bytes(self, nbytes: int) -> int:
        """Set the bound; returns the previous value."""
        if int(nbytes) < 1:
            raise ValueError(f"nbytes must be positive, got {nbytes!r}")
        old, self.nbytes = self.nbytes, int(nbytes)
        return old

    def chunk_size(self, N: int, bytes_per_sample: int) -> int:
        """Samples per chunk so that a chunk's workspace stays within the bound (at least 1)."""
        return max(1, min(N, self.nbytes // max(1, bytes_per_sample)))
