"""One module per area of the console; each exposes ``routes``."""
