"""WordPiece tokenization for the text tower."""
from biomedclip.text.tokenizer import Tokenizer, TokenizerError

__all__ = ["Tokenizer", "TokenizerError"]
