"""The metric names and directions, importable without torch (scripts/summarize_sweep.py reads them).

Everything else of the package needs torch, torchmetrics and MONAI, which take seconds to import;
``evaluation/__init__`` loads those modules only when one of their names is asked for.
"""

#: Metric columns of the tables, in order; the last two only with ``topology=True``.
#: Metric columns of the tables, in order; the last two only with ``topology=True``.
BASE_METRICS = ("dice", "iou", "precision", "recall", "hd95", "nsd")
TOPOLOGY_METRICS = ("cldice", "components_error")
METRICS = BASE_METRICS + TOPOLOGY_METRICS

#: Whether a larger value is better, per metric (the comparison report ranks by it).
HIGHER_IS_BETTER = {
    "dice": True, "iou": True, "precision": True, "recall": True, "hd95": False, "nsd": True,
    "cldice": True, "components_error": False,
}

#: The empty cases in one line (summary.json records it with the scores).
EMPTY_RULES = (
    "both empty: dice/iou/precision/recall/nsd/cldice 1, hd95 0, components_error 0; "
    "target empty, prediction not: dice/iou/precision/nsd/cldice 0, recall 1, hd95 = image diagonal; "
    "target not empty, prediction empty: dice/iou/recall/nsd/cldice 0, precision 1, hd95 = image diagonal"
)


