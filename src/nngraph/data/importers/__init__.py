"""Importers of published corpora into nngraph's store (``nngraph data import``).

``FORMATS`` maps a format name to its import function ``(src, out, **options) -> manifest``.
"""

from __future__ import annotations

from nngraph.data.importers.cnn_zoo import import_cnn_zoo
from nngraph.data.importers.inr_folder import import_inr_folder
from nngraph.data.importers.models_folder import import_models_folder
from nngraph.data.importers.wild_park import import_wild_park

FORMATS = {"inr-folder": import_inr_folder, "cnn-zoo": import_cnn_zoo, "wild-park": import_wild_park,
           "models": import_models_folder}

__all__ = ["FORMATS", "import_cnn_zoo", "import_inr_folder", "import_models_folder", "import_wild_park"]
