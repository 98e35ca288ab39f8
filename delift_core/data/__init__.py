"""Data in: rows, file formats, record layouts, the demo sets."""
