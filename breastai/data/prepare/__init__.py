"""Turn public dataset layouts into datalists (``breastai prepare ...``).

Each preparer scans a dataset folder, builds one datalist row per image or finding, assigns
groups (patients or duplicate copies) so that splits never separate related rows, writes the
datalist with :func:`breastai.data.datalist.write_datalist` (CSV or JSON by suffix, paths
relative to the datalist) and returns a :class:`PrepareReport`.

Every preparer module registers itself (:mod:`breastai.data.prepare.registry`) when imported
below; the import order is the order ``breastai prepare --help`` lists the datasets in. A new
dataset layout is one module here and one import line.
"""

from __future__ import annotations

from breastai.data.prepare.registry import Option, Preparer, get_preparer, preparers, register_preparer
from breastai.data.prepare.report import PrepareReport, label_counts

# The preparers, each registered on import, in the order the command lists them.
from breastai.data.prepare.busi import prepare_busi  # isort: skip
from breastai.data.prepare.mias import prepare_mias  # isort: skip
from breastai.data.prepare.folder import prepare_folder  # isort: skip
from breastai.data.prepare.breast_lesions_usg import prepare_breast_lesions_usg  # isort: skip
from breastai.data.prepare.merge import merge_datalists  # noqa: E402  (not a preparer: datalists in, one out)

__all__ = [
    "PrepareReport",
    "label_counts",
    "Option",
    "Preparer",
    "register_preparer",
    "preparers",
    "get_preparer",
    "prepare_busi",
    "prepare_mias",
    "prepare_folder",
    "prepare_breast_lesions_usg",
    "merge_datalists",
]
