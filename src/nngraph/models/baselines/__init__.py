"""Baselines the graph metanetworks must beat, all reading the same PyG batches.

=========  ==========================================================  ====================
name       model                                                       batches
=========  ==========================================================  ====================
mlp        ``FlatMLP``: MLP on the flattened parameters (not            one architecture
           invariant; train with ``--permute-augment``)
deepsets   ``DeepSets`` over neurons (bias/norm + pooled in/out          any, mixed
           weights), mean+max pooled per role
statnn     ``StatNN``: per-layer weight/bias statistics + MLP            any, mixed
           (Unterthiner et al. 2020)
nfn-np     ``NFNNP``: neural functional, NP layers (``nfn`` package)     one chain architecture
nfn-hnp    ``NFNHNP``: neural functional, HNP layers                     one chain architecture
dwsnet     ``DWSNet``: equivariant layers between weight spaces, all     one chain architecture
           weight/bias blocks (Navon et al. 2023)
probe      ``Probe``: the networks' outputs on K free probe inputs       any, same outputs
           + MLP (vanilla probing)
probegen   ``ProbeGen``: the same with probes from a deep linear         any, same outputs
           generator (Kahana et al. 2025)
=========  ==========================================================  ====================

Every class takes plain constructor arguments and has ``from_example(batch, out_dim,
**kwargs)``, which reads the input sizes off an example batch. ``forward(batch)``
returns [B, out_dim].
"""

from nngraph.models.baselines.deepsets import DeepSets
from nngraph.models.baselines.dwsnet import DWSNet
from nngraph.models.baselines.mlp import FlatMLP
from nngraph.models.baselines.nfn import NFNHNP, NFNNP
from nngraph.models.baselines.probing import Probe, ProbeGen
from nngraph.models.baselines.statnn import StatNN

from nngraph.models.registry import model_info, model_names  # noqa: E402 - after the classes registered

BASELINES = {name: model_info(name).cls for name in model_names() if model_info(name).baseline}

__all__ = ["BASELINES", "DWSNet", "DeepSets", "FlatMLP", "NFNHNP", "NFNNP", "Probe", "ProbeGen", "StatNN"]
