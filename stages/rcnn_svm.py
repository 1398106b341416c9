"""DVC stage ``rcnn_svm``: one linear SVM per class (hard-negative mining) and Ridge box regressors.

Reads ``data/features/train``, ``models/rcnn_cnn.pt`` (logged to MLflow with the SVMs, for ``segdet predict
--run``) and params ``base``, ``rcnn_svm``; writes ``models/rcnn_svm.npz`` (plain
arrays: ``classes``, ``svm_weight [N, D]``, ``svm_bias [N]``, ``reg_weight [N, 4, D]``, ``reg_bias [N, 4]``,
``feature_scale``), loadable with ``numpy.load(allow_pickle=False)``.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from segdet import tracking
from segdet.cli import run_stage
from segdet.config import flatten, load_params, load_section
from segdet.data.datasets import read_classes
from segdet.detection.rcnn import SvmSettings, save_svm, train_svms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--features", default="data/features/train", type=Path)
    ap.add_argument("--classes", default="data/manifests/det_classes.txt", type=Path)
    ap.add_argument("--cnn", default="models/rcnn_cnn.pt", type=Path, help="the CNN the features came from")
    ap.add_argument("--out", default="models/rcnn_svm.npz", type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("rcnn_svm", params)
    classes = read_classes(args.classes)
    settings = SvmSettings(**dataclasses.asdict(cfg))
    with tracking.stage_run("rcnn_svm", {**flatten(base, "base."), **flatten(cfg, "rcnn_svm.")}) as run:
        arrays = train_svms(args.features, classes, settings, seed=base.seed)
        save_svm(args.out, arrays)
        for i, name in enumerate(classes):
            run.log_metrics({f"{k}_{name}": float(arrays[k][i])
                             for k in ("positives", "negatives", "hard_negatives_added", "regression_samples")})
            print(f"rcnn_svm {name}: {arrays['positives'][i]} positives, {arrays['negatives'][i]} negatives "
                  f"({arrays['hard_negatives_added'][i]} mined), {arrays['regression_samples'][i]} regression samples")
        run.log_checkpoint(args.cnn)  # CNN + SVMs: what segdet predict --run needs
        run.log_checkpoint(args.out)


if __name__ == "__main__":
    sys.exit(run_stage(main))
