"""Bytes on disk: atomic writes, content keys of arrays, and the bounded feature cache."""
