"""One task's entry in ``predictions.json``: what ``evaluation.compare`` needs to recompute any interval.

Written by ``evaluation.glue`` and ``finetune.train`` alike: per evaluation split the gold labels and each
seed's predictions (class ids, or regression values rounded to 1e-5), and the constant predictor's one
prediction (the majority training label, or the mean target).
"""

from __future__ import annotations

import numpy as np

from scoring.intervals import constant_scores


def task_record(
    metrics: tuple[str, ...],
    main: tuple[str, ...],
    report_split: str,
    train_labels,
    regression: bool,
    num_labels: int,
    gold: dict,
    seeds: dict[str, dict],
) -> dict:
    """``gold``: split → labels; ``seeds``: split → {seed: scores [N, C], class ids [N] or values [N]}."""

    def pred(s) -> list:
        s = np.asarray(s)
        if regression:
            return [round(float(v), 5) for v in s]
        return [int(v) for v in (s.argmax(-1) if s.ndim == 2 else s)]

    const = constant_scores(np.asarray(train_labels), 1, regression, num_labels)
    return {
        "metrics": list(metrics),
        "main": list(main),
        "report_split": report_split,
        "constant": pred(const)[0],
        "splits": {
            split: {
                "gold": [float(v) if regression else int(v) for v in gold[split]],
                "seeds": {str(seed): pred(p) for seed, p in seeds[split].items()},
            }
            for split in gold
        },
    }
