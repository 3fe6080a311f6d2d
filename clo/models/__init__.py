"""Offline models: the table (clo.models.table) and its entries, which register themselves when this package loads.

    python -m clo models list | get NAME
"""

from clo.models import miniature, smollm2, tiny  # noqa: F401  (each entry registers itself in the table)
