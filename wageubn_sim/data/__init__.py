"""Datasets streamed in batches (`sources`) and runs over their shards, serial or on a Dask
cluster (`shards`)."""
from .sources import (ArraySource, BatchIterableSource, DataSource, ImageFolderSource, NpyFileSource,
                      NpyFolderSource, NpzArraySource, Preprocess, open_data)

__all__ = ["ArraySource", "BatchIterableSource", "DataSource", "ImageFolderSource", "NpyFileSource",
           "NpyFolderSource", "NpzArraySource", "Preprocess", "open_data"]
