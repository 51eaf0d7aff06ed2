"""Retrieval: collections of documents (SQLite + FTS5 as the truth, FAISS as a derived index)."""
