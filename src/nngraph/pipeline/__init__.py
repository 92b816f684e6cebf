"""Stored corpora -> graph batches on a device: loading, augmentation, collation (above graph/, below models/)."""
