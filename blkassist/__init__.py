"""BLK-Assist: the library behind the workflow's rules.

Rules stay thin and call into this package; everything here is importable and tested
without Snakemake.
"""

__version__ = "0.1.0"
