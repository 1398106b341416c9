"""One MLflow parent run per pipeline run, and the DVC output that links it: after a plain ``dvc repro`` of the
tiny project (the session's ``pipeline_repo``), the parent holds every parameter of ``params.yaml`` and the
headline metrics of the metrics files, and the stage runs are nested under it."""

import json
import re

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_dvc_repro_logs_one_parent_run_with_every_param_and_test_metric(pipeline_repo, mlflow_store):
    first = pipeline_repo.parent / "first_run"  # the files as the plain dvc repro wrote them (tests/conftest.py)
    record = json.loads((first / "reports" / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_store)  # the store the pipeline logged to (not a global left set)
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["segdet.stage"] == "pipeline"
    assert parent.info.run_name == "pipeline [workspace]"
    # every leaf of params.yaml, named section.key as in the file
    params = _leaves(yaml.safe_load((first / "params.yaml").read_text()))
    assert set(parent.data.params) == set(params)
    assert float(parent.data.params["unet_train.lr"]) == params["unet_train.lr"]
    assert parent.data.params["data.seg.source"] == "synthetic"
    # the test metrics as the eval stages wrote them
    reports = {name: json.loads((first / "reports" / f"{name}.json").read_text())
               for name in ("unet_eval", "rcnn_eval", "yolo_eval")}
    assert parent.data.metrics["unet_eval.dice"] == pytest.approx(reports["unet_eval"]["dice"])
    assert parent.data.metrics["rcnn_eval.map50"] == pytest.approx(reports["rcnn_eval"]["map50"])
    assert parent.data.metrics["yolo_eval.map50"] == pytest.approx(reports["yolo_eval"]["map50"])
    # the speed figures, with the hardware they were measured on
    info = {name: json.loads((first / "reports" / f"{name}_info.json").read_text())
            for name in ("unet_eval", "yolo_eval")}
    assert parent.data.metrics["unet_eval.images_per_second"] == pytest.approx(info["unet_eval"]["images_per_second"])
    assert parent.data.metrics["yolo_eval.fps"] == pytest.approx(info["yolo_eval"]["fps"])
    assert parent.data.tags["segdet.yolo_eval.hardware"] == info["yolo_eval"]["hardware"]
    # the stage runs nested under it: every stage but track ran, none was restored
    stages = set(yaml.safe_load((pipeline_repo / "dvc.yaml").read_text())["stages"]) - {"track"}
    nested = client.search_runs([parent.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags["segdet.stage"] for r in nested} == stages
    assert record["stage_runs"] == {r.data.tags["segdet.stage"]: r.info.run_id for r in nested}
    assert record["restored_stages"] == []
    assert all(r.data.tags["segdet.pipeline_run"] == record["pipeline_run"] for r in nested)
    assert record["git_commit"] == parent.data.tags["mlflow.source.git.commit"]
    assert record["git_dirty"] == "false"  # a fresh repository: only DVC's own files changed
    # the eval stages registered their served models, from runs nested under this parent
    assert set(record["registered_models"]) == {"segdet-unet", "segdet-rcnn", "segdet-yolo"}
    for name, version in record["registered_models"].items():
        assert client.get_model_version(name, version).run_id in record["stage_runs"].values()


def test_summary_lists_every_stages_seconds_from_its_mlflow_run(pipeline_repo, mlflow_store):
    """The report stage's "Stage times": every stage before it ran in this first dvc repro, with the seconds and
    the peak memory its MLflow run logged (stage_seconds, stage_peak_rss_mb)."""
    first = pipeline_repo.parent / "first_run"
    summary = (first / "reports" / "summary.md").read_text()
    found = re.findall(r"^\| (\w+) \| ([\d.]+) \| (\d+) \| this run \|$", summary, re.M)
    rows = {stage: seconds for stage, seconds, _ in found}
    memory = {stage: int(mb) for stage, _, mb in found}
    stages = [s for s in yaml.safe_load((pipeline_repo / "dvc.yaml").read_text())["stages"] if s not in ("report", "track")]
    assert list(rows) == stages
    client = MlflowClient(tracking_uri=mlflow_store)
    record = json.loads((first / "reports" / "mlflow.json").read_text())
    for stage in ("unet_train", "yolo_train"):
        (run,) = client.search_runs([client.get_run(record["parent_run_id"]).info.experiment_id],
                                    f"tags.`segdet.stage` = '{stage}' and tags.`segdet.pipeline_run` = "
                                    f"'{client.get_run(record['parent_run_id']).data.tags['segdet.pipeline_run']}'")
        seconds = run.data.metrics["stage_seconds"]
        assert float(rows[stage]) == pytest.approx(seconds, abs=0.06)
        assert seconds >= (run.info.end_time - run.info.start_time) / 1000  # the process ran at least as long as its run
        peak = run.data.metrics["stage_peak_rss_mb"]
        assert memory[stage] == round(peak)
        assert 150 < peak < 8000  # a process that imported torch and trained, in MB (not KiB, not bytes)
    total = float(re.search(r"^\| \*\*all stages\*\* \| ([\d.]+) \|", summary, re.M).group(1))
    assert total == pytest.approx(sum(map(float, rows.values())), abs=0.5)
