"""Extraction: read -> preprocess -> forward -> write (shards) -> merge, distributed by Dask."""
from .run import ExtractConfig, ExtractSummary, extract

__all__ = ["ExtractConfig", "ExtractSummary", "extract"]
