"""Stores: the pair store, the embedding store, their SQLite set-up, the cache folder."""
