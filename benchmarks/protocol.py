"""The fixed protocol of the task benchmarks (tables 1-4 and 6), full and quick, and the
paper protocol (``PAPER``, run by bench_paper.py: whole corpus, rows to their plateau; the
MNIST suite's epoch caps ``MNIST_CAPS``).

Corpora (Fashion-MNIST from Debian's dataset-fashion-mnist):
- INRs: ``limit`` images class-stratified over the dataset's own train/val/test split
  (full: 7,000 -> 5,500 / 500 / 1,000), one 2->32->32->1 SIREN each, ``dwsnet`` and
  ``standard`` variants with their default recipes;
- CNN zoos: ``zoo_count`` CNNs trained on 14x14 images, split 80/10/10: sampled
  architectures ("mixed") and the fixed architecture.

Models: NG-GNN and NG-T at the CPU size ``GRAPH_SIZE`` (node width 32, edge width 16,
2 layers; NG-T 4 heads); the baselines at their defaults. All: AdamW, lr 3e-3, batch 32,
50 warm-up steps then cosine decay, the best validation epoch's test metric reported.

Fixed-epoch runs (tables 1-4) use one torch thread each, two side by side; their
numbers do not depend on timing. Time-budget runs (table 6) also use one thread each,
two side by side, so every model gets the same CPU time: one core for ``budget_s``.
"""

from __future__ import annotations

from nngraph.tasks.dilate import FLOOR_IMAGES

GRAPH_MODELS = ("nggnn", "ngt")
GRAPH_SIZE = {"hidden": 32, "edge_hidden": 16, "layers": 2}
NGT_HEADS = 4
BASELINES = ("mlp", "mlp-aug", "deepsets", "nfn-np", "nfn-hnp")
LR = 3e-3
BATCH_SIZE = 32
# the dilation floor's row in both the full and the paper tables
FLOOR_TITLE = f"floor: SIRENs fitted to the first {FLOOR_IMAGES} dilated test images"

PROTOCOLS = {
    "full": {
        "inr_limit": 7000,
        "zoo_count": 200,
        "probes": (0, 4, 16, 64),
        "seeds": (0, 1, 2),
        "graph_epochs": 2,  # NG-GNN / NG-T on INRs
        "baseline_epochs": 10,  # the baselines are cheap: 5x the epochs of the graph models
        "cnn_epochs": 10,
        "dilate_epochs": 2,
        "zoo_epochs": 10,
        "budget_s": 420.0,
        "budget_probes": 16,
    },
    "quick": {
        "inr_limit": 1000,
        "zoo_count": 30,
        "probes": (0, 16),
        "seeds": (0,),
        "graph_epochs": 1,
        "baseline_epochs": 3,
        "cnn_epochs": 2,
        "dilate_epochs": 1,
        "zoo_epochs": 3,
        "budget_s": 30.0,
        "budget_probes": 16,
    },
}


# The paper protocol (benchmarks/bench_paper.py): the whole Fashion-MNIST INR corpus, every row trained to its
# plateau (early stopping on validation, a training-time cap), run row by row over several sittings.
PAPER = {
    "inr_limit": None,  # all 70,000 images: 55,000 train / 5,000 val / 10,000 test
    "row_limit_s": 3600.0,  # every row (all its seeds, evaluation included) within 60 minutes on 2 cores
    "long_row_s": 1200.0,  # a row whose run is longer than 20 minutes gets one seed, the others three
    "train_share": 0.8,  # of a run's share of the row: training; the rest loads data and evaluates every epoch
    # the image CNN's epochs are short (20 s), so evaluating 15,000 images after each costs a fifth
    # of its training time: at 0.8 its row took 60.1 minutes (a test run shared the CPU), at 0.7 51.9
    "cnn_train_share": 0.7,
    "seeds": (0, 1, 2),
    # no early stopping: every run trains to its cap with the cosine decay spanning it, and its
    # best validation epoch is tested. With patience 5 the first row (NG-GNN, 64 probes) stopped
    # after 23 of its 48 minutes with the learning rate still at 54 % of its peak and the
    # validation accuracy swinging +-1.5 points per epoch: stopped before the decay, not at a plateau.
    "patience": None,
    "epoch_cap": 1000,  # only an upper bound: runs end at their time budget
    "threads": 2,  # one run at a time, both cores
    # the weight-space augmentations of the published INR-classification runs (neural-graphs
    # experiments/data.py); its "noise" is a fixed shift without a random draw, so no noise here
    "augment": {"rotate_augment": 45.0, "translate_augment": 0.25, "scale_augment": 0.2, "weight_dropout": 0.01},
    # graph models train with compiled layers and bf16 autocast: about twice the graphs per
    # second of eager fp32 here, test accuracy within the seed spread (RESULTS 5f)
    "graph_speed": {"compile": True, "precision": "bf16"},
}
# The probing baselines (models/baselines/probing.py) train with ProbeGen's published recipe: Adam 3e-4
# without weight decay, warm-up or clipping, cosine decay per step, batch 32 (the protocol's).
PROBING_MODELS = ("probe", "probegen")
PROBING_RECIPE = {"lr": 3e-4, "weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 0.0}
# The probing rows and the graph rows with generated probes (bench_paper.RowPlan.augmented) train without the
# weight-space augmentations (``PAPER["augment"]``; ProbeGen's recipe has none), and the graph rows read out
# through ProbeGen's head (6 Linear layers of width 256). Measured on an 8,000-image Fashion-MNIST corpus (6,286 training INRs),
# 20 epochs, batch 32: ProbeGen-128 reached 65.7 % test accuracy with the augmentations and 79.9 % without;
# NG-GNN with 128 generated probes and that head 69.0 % test with them and 83.5 % validation without.
GENERATED_HEAD = {"head_width": 256, "head_layers": 6}

# The MNIST suite (bench_paper.py --suite mnist): every row capped in epochs (row: (epochs per run, seeds)),
# so that a row's result does not depend on the machine's load; its wall time is recorded beside it.
# Training seconds per epoch on this 2-core machine (55,000 training INRs, batch 32, 2 threads; graph models
# compiled, bf16): measured by the Fashion-MNIST paper rows (the same SIREN 2-32-32-1, the same corpus size),
# and for the models without such a row, from interleaved step times beside those rows' models
# (``bench_paper.py --suite mnist --step-times``, README "The MNIST suite"): DWSNet steps as fast as NFN-NP, MLP 0.2x and the probing models 0.8-1.0x
# DeepSets; the probe count changes NG-GNN's and NG-T's eager step time by less than the noise. ProbeGen-128 and
# NG-GNN with 128 generated probes: their Fashion-MNIST rows' epochs run alone (FASHION_CAPS below).
MNIST_EPOCH_S = {
    "mlp": 26, "deepsets": 37, "dwsnet": 110, "nfn-np": 111, "nfn-hnp": 144, "probe-128": 36, "probegen-128": 30,
    "nggnn-p0": 169, "nggnn-p4": 165, "nggnn-p16": 165, "nggnn-p64": 137, "nggnn-gen128": 105,
    "ngt-p0": 262, "ngt-p4": 300, "ngt-p16": 320, "ngt-p64": 360, "ngt-gen128": 380,
    "nggnn-p0-nopos": 125, "ngt-p0-nopos": 262,
    "dilate-dwsnet": 130, "dilate-nfn-np": 169, "dilate-nggnn-p0": 180, "dilate-nggnn-p4": 180,
    "dilate-nggnn-p16": 180, "dilate-nggnn-p64": 180, "dilate-ngt-p0": 300, "dilate-ngt-p4": 330,
    "dilate-ngt-p16": 340, "dilate-ngt-p64": 360,
}
# Caps: the 0- and 64-probe rows get the most epochs (the same number for both, so the probe comparison is at
# equal epochs; the ablation rows those of their 0-probe row): 35-48 minutes of training, one seed. The 4- and
# 16-probe rows half their epochs (about 20 minutes), the baselines and probing rows 15-35 minutes (MLP and
# DeepSets three seeds). In all about 14 hours of training, 15 with evaluation and compilation.
MNIST_CAPS = {
    "mlp": (12, 3), "deepsets": (8, 3), "dwsnet": (18, 1), "nfn-np": (12, 1), "nfn-hnp": (10, 1),
    "nggnn-p0": (16, 1), "nggnn-p4": (8, 1), "nggnn-p16": (8, 1), "nggnn-p64": (16, 1),
    "ngt-p0": (8, 1), "ngt-p4": (4, 1), "ngt-p16": (4, 1), "ngt-p64": (8, 1),
    "nggnn-p0-nopos": (16, 1), "ngt-p0-nopos": (8, 1),
    "probe-128": (25, 1), "probegen-128": (25, 1), "nggnn-gen128": (16, 1), "ngt-gen128": (5, 1),
    "dilate-dwsnet": (10, 1), "dilate-nfn-np": (8, 1),
    "dilate-nggnn-p0": (14, 1), "dilate-nggnn-p4": (7, 1), "dilate-nggnn-p16": (7, 1), "dilate-nggnn-p64": (14, 1),
    "dilate-ngt-p0": (8, 1), "dilate-ngt-p4": (4, 1), "dilate-ngt-p16": (4, 1), "dilate-ngt-p64": (8, 1),
}
# The Fashion-MNIST suite's probing rows and generated-probe graph rows are capped in epochs too (its older
# rows in training time), within the row limit at MNIST_EPOCH_S (the same corpus size and SIREN).
# Measured alone on the first run (the records in results/paper_rows/): NG-GNN with 128 generated probes and
# no augmentations 85-115 s an epoch, not 165, so its 16 epochs took 31 of the 48 minutes; ProbeGen-128 27-33 s.
FASHION_CAPS = {"probe-128": (75, 1), "probegen-128": (75, 1), "nggnn-gen128": (16, 1), "ngt-gen128": (7, 1)}
# What a run costs beyond its training epochs: validation after every epoch (5,000 INRs, forward only),
# the final test (10,000), loading the corpus and compiling: about 8 % (the Fashion-MNIST rows: 4-10 %).
MNIST_OVERHEAD = 1.08


def model_settings(model: str, probes: int = 0, positions: bool = True,
                   generated: bool = False) -> tuple[str, dict, bool]:
    """(registry name, model kwargs, permutation augmentation) of a benchmark model label;
    ``generated``: the graph model's probes come from the deep linear generator."""
    if model == "mlp-aug":
        return "mlp", {}, True
    if model in GRAPH_MODELS:
        kwargs = dict(GRAPH_SIZE, probes=probes)
        if model == "ngt":
            kwargs["heads"] = NGT_HEADS
        if not positions:
            kwargs["position_embeddings"] = False
        if generated:
            kwargs.update(probe_generator="deep-linear", **GENERATED_HEAD)
        return model, kwargs, False
    if model in PROBING_MODELS:
        return model, {"probes": probes}, False
    return model, {}, False
