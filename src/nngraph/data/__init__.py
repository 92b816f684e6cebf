"""Data: images, INR corpora, CNN zoos and their on-disk store."""
