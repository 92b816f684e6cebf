import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def inr_corpus(tmp_path_factory):
    """40 digits INRs (8x8, 2->8->8->1 dwsnet, 30 fitting steps) in train/val/test splits; read-only."""
    from nngraph.data.build import build_inr_corpus

    root = tmp_path_factory.mktemp("shared") / "inrs"
    build_inr_corpus(root, images="digits", variant="dwsnet", steps=30, hidden=8, limit=40, seed=0,
                     shard_size=20, workers=1, progress=False, log=lambda *a: None)
    return root
