"""Figure search: an index of image embeddings built from pair Parquet (`build_index`, Ray Data) and exact cosine
top-k over it in bounded memory (`FigureIndex`), served by /v1/search. Only `build` imports Ray."""
from biomedclip.search.index import FigureIndex, SearchIndexError

__all__ = ["FigureIndex", "SearchIndexError"]
