"""``segdet`` console entry: the commands a user runs outside DVC (check, predict, preset)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segdet.stage import report_errors


def _check(args: argparse.Namespace) -> int:
    from segdet.data.pairs import ManifestError, read_manifest, validate_det, validate_seg

    root = Path(args.root)
    problems: list[str] = []
    total = 0
    for path in args.manifests:
        try:
            pairs = read_manifest(path)
        except ManifestError as exc:
            problems += exc.problems
            continue
        total += len(pairs)
        if args.kind == "seg":
            problems += validate_seg(pairs, root, progress=True)
        else:
            classes = Path(args.classes).read_text().split("\n") if args.classes else None
            classes = [c for c in classes if c] if classes else None
            problems += validate_det(pairs, root, classes, progress=True).problems
    for p in problems:
        print(p)
    print(f"{total} pair(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def _predict(args: argparse.Namespace) -> int:
    import tempfile

    from segdet.predict import (
        download_run_checkpoint,
        find_images,
        load_predictor,
        load_served,
        model_files,
        predict_images,
        served_uri,
    )
    from segdet.runtime import device_name, resolve_device

    uri = served_uri(args.run) if args.run else None  # an eval run's served model, or a models:/ URI
    if uri is None:  # workspace models (or a training run's checkpoint/) with the settings of params.yaml
        from segdet.config import load_params, load_section
        from segdet.inference import settings_of

        params = load_params(args.params) if Path(args.params).is_file() else {}
        ev = load_section(f"{args.kind}_eval", params)
        proposals = None
        if args.kind == "rcnn":  # mode auto: the one the workspace's proposals stage chose
            from dataclasses import replace

            from segdet.detection.proposals import resolve_mode

            proposals = load_section("proposals", params)
            proposals = replace(proposals, mode=resolve_mode(proposals.mode, Path("reports/proposals_info.json")))
        settings = settings_of(args.kind, ev, proposals, args.score_threshold)
    device = resolve_device(args.device)
    images = find_images(args.inputs)
    note = ""
    if uri is not None:  # its files and the settings of the run that logged it
        predictor, note = load_served(uri, args.kind, device, args.score_threshold)
        records = predict_images(predictor, images, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            files = download_run_checkpoint(args.run, args.kind, tmp) if args.run else model_files(args.kind, args.models)
            predictor = load_predictor(args.kind, files, device, settings)
            records = predict_images(predictor, images, args.out)
    found = sum(len(r.get("detections", [])) for r in records)
    what = f"{found} detection(s)" if args.kind != "unet" else "masks"
    print(f"predict {args.kind}: {len(records)} image(s), {what} -> {args.out}/ (predictions.json, overlays) "
          f"on {device_name(device)}{note}")
    return 0


def _preset(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from segdet.presets import available, command_line, preset_command

    if args.name is None:
        print("presets: " + (", ".join(available(args.presets_dir)) or f"none in {args.presets_dir}/"))
        return 0
    cmd = preset_command(args.name, args.set or [], params_path=args.params, presets_dir=args.presets_dir,
                         all_stages=args.all, exp_name=args.exp_name)
    print(command_line(cmd))
    if not args.run:
        return 0
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    return subprocess.call([dvc, *cmd[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segdet", description=__doc__.replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate manifests (seg: image + 0/255 mask; det: image + VOC XML)")
    check.add_argument("kind", choices=["seg", "det"], help="what the manifests list")
    check.add_argument("manifests", nargs="+", help="manifest files, one 'image_path label_path' a line")
    check.add_argument("--root", default=".", help="folder that relative manifest paths start from")
    check.add_argument("--classes", help="det: file of known class names, one a line")
    pred = sub.add_parser("predict", help="run a trained UNet, R-CNN or YOLOv1 on images: overlays + predictions.json",
                          description="Run a trained model on image files or folders. Writes <stem>.png overlays, "
                                      "UNet <stem>_mask.png (0/255), and predictions.json into --out.")
    pred.add_argument("kind", choices=["unet", "rcnn", "yolo"], help="which model")
    pred.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    pred.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    src = pred.add_mutually_exclusive_group()
    src.add_argument("--models", default="models", help="folder of the pipeline's model files (default: models)")
    src.add_argument("--run", metavar="RUN_OR_URI",
                     help="a served model instead, with its files and the settings of the run that logged it: the "
                          "MLflow run id of an eval run (unet_eval, rcnn_eval, yolo_eval), or a model URI "
                          "(models:/segdet-unet@best, models:/segdet-yolo/3, runs:/<id>/model); or the run id of a "
                          "training run (unet_train, rcnn_svm, yolo_train): its checkpoint/ with params.yaml's settings")
    pred.add_argument("--score-threshold", type=float, help="keep detections scoring at least this (default: "
                      "rcnn_eval / yolo_eval score_threshold in params.yaml, or the served model's; when that is "
                      "null, the per-class thresholds chosen on the val split and stored with the model)")
    pred.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    pred.add_argument("--params", default="params.yaml",
                      help="params file for proposal, NMS and UNet test-time settings (unet_eval.tta, postprocess); "
                           "not read for a served model (--run of an eval run or a models:/ URI)")
    pre = sub.add_parser("preset", help="print (or run) the `dvc exp run` command of a real-data preset",
                         description="Turn presets/<name>.yaml into `dvc exp run -S section.key=value ... <stages>`. "
                                     "Without a name, list the presets. Your own -S values win over the preset's.")
    pre.add_argument("name", nargs="?", help="preset name in --presets-dir (e.g. isic2018, voc) or a YAML file")
    pre.add_argument("-S", "--set", action="append", metavar="KEY=VALUE",
                     help="a parameter on top of the preset, as for dvc exp run (e.g. -S data.seg.path=/data/isic)")
    pre.add_argument("--run", action="store_true", help="run the command (default: print it)")
    pre.add_argument("--all", action="store_true", help="run the whole pipeline, not only the preset's models")
    pre.add_argument("--exp-name", help="name of the DVC experiment (dvc exp run --name)")
    pre.add_argument("--presets-dir", default="presets", help="folder of the presets (default: presets)")
    pre.add_argument("--params", default="params.yaml", help="params file the preset is checked against")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command in ("predict", "preset"):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return report_errors(_predict if args.command == "predict" else _preset, args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
