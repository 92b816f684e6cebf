"""The pieces of a training run, wired together by ``nngraph.train.Trainer``.

- ``config``: ``TrainConfig``, every setting declared once (type, default, help, valid range);
- ``build``: the run made from a checked config (corpus splits, task, loaders, model, optimiser);
- ``folder``: the run folder's files (what is written when, and how a resume finds its place);
- ``evaluate``: a model's predictions and metrics over a split;
- ``distributed``: the process group of a ``torchrun`` launch.
"""
