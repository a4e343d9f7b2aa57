"""phi1: the phi-1 ("Textbooks Are All You Need") recipe end to end."""

__version__ = "0.1.0"
