"""Compression for the edge: one module per technique, and the search that combines them."""
