"""FashionSearchNet: fashion image search with attribute manipulation and weakly supervised localization.

Light on import: the model, training and serving code load only when used.
"""

__version__ = "0.1.0"
