"""Vector storage and search backends behind one interface; the versioned on-disk index.

Index code stores and searches arrays. It never imports the model.
"""

from .backends import BACKENDS, VectorBackend, open_backend
from .store import IndexError_, LoadedIndex, load_index

__all__ = ["BACKENDS", "VectorBackend", "open_backend", "IndexError_", "LoadedIndex", "load_index"]
