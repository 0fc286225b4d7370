"""The HTTP apps this project writes around third-party engines (sentence-transformers, Tesseract)."""
