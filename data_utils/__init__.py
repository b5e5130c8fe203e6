"""Shared data machinery: the TSV reader, media loading, transforms, vocabulary and the demo corpus."""
