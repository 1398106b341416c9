"""The models the eval stages of a real pipeline run registered, served for real: ``mlflow models serve -m models:/...
--env-manager local`` on 127.0.0.1, a real image posted to ``/invocations`` as base64, and the answer checked
against ``segdet predict`` on the same image (the workspace's model files and params.yaml, the same checkpoint).

The image is a real photo from ../shared/realdata when it is there (an ISIC image; a raccoon-voc JPEG), else one
of the pipeline's synthetic test images, resized to a size that is neither square nor the network's input."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from segdet import serving
from tests.conftest import REALDATA
from tests.serving.conftest import b64, calibrated_yolo
from tests.serving.conftest import calibrated as calibrated_unet
from tests.stages.conftest import sh

pytestmark = pytest.mark.slow

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(uri: str, folder: Path) -> Iterator[str]:
    """``mlflow models serve -m <uri> --env-manager local`` on a free port of 127.0.0.1 (the session's MLflow store);
    yields its URL once ``/ping`` answers."""
    port = _free_port()
    log_path = folder / f"serve-{port}.log"
    mlflow_cmd = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cmd)] if mlflow_cmd.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = open(log_path, "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True)
    url, start = f"http://127.0.0.1:{port}", time.perf_counter()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - start > 180:
                pytest.fail(f"{' '.join(cmd)} did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        print(f"mlflow models serve -m {uri}: /ping answered after {time.perf_counter() - start:.1f} s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the server and its uvicorn worker: the group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        log.close()


def _invoke(url: str, images: list[str], params: dict | None = None) -> list[dict]:
    body = {"dataframe_split": {"columns": ["image"], "data": [[im] for im in images]}}
    if params:
        body["params"] = params
    req = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["predictions"]


def _predict(repo: Path, kind: str, image: Path, out: Path, *args: str) -> dict:
    """``segdet predict`` in the pipeline's workspace: its ``predictions.json`` record of ``image``."""
    res = sh([sys.executable, "-m", "segdet.cli", "predict", kind, str(image), "--out", str(out), *args], repo,
             check=False)
    assert res.returncode == 0, res.stderr
    [rec] = json.loads((out / "predictions.json").read_text())["images"]
    return rec


def _image(repo: Path, kind: str, tmp: Path) -> Path:
    """A real photo when ../shared/realdata is there, else a synthetic test image at 150 x 110 pixels."""
    real = REALDATA / ("isic-sample/images/ISIC_0000000.jpg" if kind == "unet" else "raccoon-voc/JPEGImages/raccoon-1.jpg")
    if real.is_file():
        return real
    folder = "isic/images" if kind == "unet" else "voc/JPEGImages"
    first = sorted((repo / "data" / "raw" / folder).glob("*.jpg"))[0]
    out = tmp / f"synthetic_{kind}.png"
    cv2.imwrite(str(out), cv2.resize(cv2.imread(str(first)), (150, 110), interpolation=cv2.INTER_LINEAR))
    return out


def _version(kind: str, files: list[Path]):
    """The version of ``segdet-<kind>`` holding exactly ``files`` (the pipeline's, by the MD5 ``dvc.lock`` records),
    newest first: the session's store also holds versions of other tests' pipelines."""
    want = {f"segdet.md5.{f.name}": serving.md5(f) for f in files}
    found = [v for v in MlflowClient().search_model_versions(f"name = '{serving.REGISTERED[kind]}'")
             if all(v.tags.get(k) == h for k, h in want.items())]
    assert found, f"no version of {serving.REGISTERED[kind]} holds {[str(f) for f in files]}: did the eval stage log it?"
    return max(found, key=lambda v: int(v.version))


def _mask(b64_png: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64_png), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def calibrated(pipeline_repo, tmp_path_factory) -> dict[str, tuple[str, Path, Path]]:
    """The pipeline's UNet and YOLOv1 with their last biases moved so that the served image gets a mask with both
    classes and boxes (the tiny pipeline's networks, two epochs on 12 images, predict background everywhere and
    no box), logged and registered as the eval stages log theirs, as ``segdet-<kind>-calibrated``:
    ``{kind: (model URI, its models folder, the image)}``."""
    from segdet.config import load_params, load_section
    from segdet.inference import settings_of

    folder = tmp_path_factory.mktemp("calibrated")
    params = load_params(pipeline_repo / "params.yaml")
    exp = MlflowClient().get_experiment_by_name("segdet-serving-tests")
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(
        "segdet-serving-tests", artifact_location=(folder / "art").as_uri())
    out = {}
    for kind in ("unet", "yolo"):
        image = _image(pipeline_repo, kind, folder)
        ckpt = torch.load(pipeline_repo / "models" / f"{kind}.pt", map_location="cpu", weights_only=True)
        rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
        models = folder / kind
        models.mkdir()
        torch.save(calibrated_unet(ckpt, rgb) if kind == "unet" else calibrated_yolo(ckpt), models / f"{kind}.pt")
        settings = settings_of(kind, load_section(f"{kind}_eval", params))
        with mlflow.start_run(experiment_id=exp_id):
            version = serving.log_model(None, kind, [models / f"{kind}.pt"], settings, image,
                                        registered_model=f"segdet-{kind}-calibrated")
        assert version is not None
        out[kind] = (f"models:/segdet-{kind}-calibrated/{version.version}", models, image)
    return out


def _check_unet(url: str, repo: Path, image: Path, out: Path, *models: str) -> float:
    [answer] = _invoke(url, [b64(image)])
    h, w = cv2.imread(str(image)).shape[:2]
    mask = _mask(answer["mask"])
    assert mask.shape == (h, w) == (answer["height"], answer["width"])  # the image's size, not the network's
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    rec = _predict(repo, "unet", image, out, *models)
    expected = cv2.imread(str(out / rec["mask"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, expected), f"served mask differs from segdet predict's on {(mask != expected).sum()} pixels"
    assert answer["lesion_fraction"] == rec["lesion_fraction"]
    return answer["lesion_fraction"]


def test_served_unet_mask_matches_segdet_predict(pipeline_repo, calibrated, tmp_path):
    """The version unet_eval registered (the pipeline's models/unet.pt), and a calibrated one whose mask has both
    classes (so a channel-order, resampling or size mistake changes pixels): each served answer is the mask
    ``segdet predict`` writes for the same file."""
    version = _version("unet", [pipeline_repo / "models" / "unet.pt"])
    image = _image(pipeline_repo, "unet", tmp_path)
    with served(f"models:/segdet-unet/{version.version}", tmp_path) as url:
        _check_unet(url, pipeline_repo, image, tmp_path / "ws")
        bad = urllib.request.Request(f"{url}/invocations", json.dumps(
            {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"not an image").decode()]]}}).encode(),
            {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=60)
        assert err.value.code == 400 and "cannot read image" in err.value.read().decode()
    uri, models, image = calibrated["unet"]
    with served(uri, tmp_path) as url:
        fraction = _check_unet(url, pipeline_repo, image, tmp_path / "calibrated", "--models", str(models))
    assert 0.05 < fraction < 0.95


def _check_yolo(url: str, repo: Path, image: Path, out: Path, *models: str) -> dict:
    """At the model's own operating point and at a request's ``score_threshold`` 0: the boxes, scores and labels of
    ``segdet predict``'s predictions.json (``--score-threshold 0``). Returns the answer at 0."""
    h, w = cv2.imread(str(image)).shape[:2]
    for name, params, args in (("own", None, []), ("low", {"score_threshold": 0.0}, ["--score-threshold", "0"])):
        [answer] = _invoke(url, [b64(image)], params)
        rec = _predict(repo, "yolo", image, out / name, *models, *args)
        assert (answer["width"], answer["height"]) == (w, h)
        assert answer["boxes"] == [d["box"] for d in rec["detections"]]
        assert answer["scores"] == [d["score"] for d in rec["detections"]]
        assert answer["labels"] == [d["class"] for d in rec["detections"]]
    return answer


def test_served_yolo_boxes_match_segdet_predict(pipeline_repo, calibrated, tmp_path):
    """The version yolo_eval registered (the pipeline's models/yolo.pt), and a calibrated one that finds boxes: each
    served answer is the detections of ``segdet predict``'s predictions.json for the same file, in the image's
    pixels."""
    version = _version("yolo", [pipeline_repo / "models" / "yolo.pt"])
    image = _image(pipeline_repo, "yolo", tmp_path)
    with served(f"models:/segdet-yolo/{version.version}", tmp_path) as url:
        _check_yolo(url, pipeline_repo, image, tmp_path / "ws")
    uri, models, image = calibrated["yolo"]
    with served(uri, tmp_path) as url:
        answer = _check_yolo(url, pipeline_repo, image, tmp_path / "calibrated", "--models", str(models))
    h, w = cv2.imread(str(image)).shape[:2]
    boxes = np.array(answer["boxes"])
    assert len(boxes) >= 4 and set(answer["labels"]) <= {"circle", "square", "triangle", "star", "cross"}
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
    model_input = torch.load(models / "yolo.pt", weights_only=True)["config"]["input_size"]
    assert boxes[:, 2].max() > max(0.5 * w, model_input), "boxes are not in the image's pixels"
    assert boxes[:, 3].max() > max(0.5 * h, model_input), "boxes are not in the image's pixels"


def test_served_rcnn_searches_its_own_proposals_like_segdet_predict(pipeline_repo, tmp_path):
    """The version rcnn_eval registered, loaded as the server loads it: the detections of ``segdet predict``."""
    files = [pipeline_repo / "models" / "rcnn_cnn.pt", pipeline_repo / "models" / "rcnn_svm.npz"]
    version = _version("rcnn", files)
    image = _image(pipeline_repo, "rcnn", tmp_path)
    model = mlflow.pyfunc.load_model(f"models:/segdet-rcnn/{version.version}")
    assert model.metadata.metadata["segdet_kind"] == "rcnn"
    config = model.model_config
    assert config["proposals"]["max_proposals"] == 150 and config["nms_iou"] == 0.3  # the pipeline's params
    out = model.predict(pd.DataFrame({"image": [b64(image)]}), params={"score_threshold": -10.0})
    rec = _predict(pipeline_repo, "rcnn", image, tmp_path / "rcnn", "--score-threshold", "-10")
    assert out.boxes[0] == [d["box"] for d in rec["detections"]] and len(out.boxes[0]) > 0
    assert out.labels[0] == [d["class"] for d in rec["detections"]]


def test_predict_run_uses_the_served_model_and_its_settings(pipeline_repo, calibrated, tmp_path):
    """``segdet predict --run``: an eval run's id, or a models:/ URI, gives the predictions of the model files it
    holds with the settings it was logged with, whatever params.yaml says now; --score-threshold still overrides;
    the kind must match."""
    elsewhere = tmp_path / "elsewhere"  # no models/, and a params.yaml that keeps one detection an image
    elsewhere.mkdir()
    params = (pipeline_repo / "params.yaml").read_text()
    assert "max_detections: 100\n" in params
    (elsewhere / "params.yaml").write_text(params.replace("max_detections: 100\n", "max_detections: 1\n"))
    uri, models, image = calibrated["yolo"]
    run_id = MlflowClient().get_model_version("segdet-yolo-calibrated", uri.rsplit("/", 1)[1]).run_id
    for i, (ref, args) in enumerate(((run_id, []), (uri, ["--score-threshold", "0"]))):
        ws = _predict(pipeline_repo, "yolo", image, tmp_path / f"ws{i}", "--models", str(models), *args)
        rec = _predict(elsewhere, "yolo", image, tmp_path / f"run{i}", "--run", ref, *args)
        assert len(ws["detections"]) > 1 and rec["detections"] == ws["detections"], ref
    unet = _version("unet", [pipeline_repo / "models" / "unet.pt"])  # the pipeline's own unet_eval run
    image = _image(pipeline_repo, "unet", tmp_path)
    ws = _predict(pipeline_repo, "unet", image, tmp_path / "unet_ws")
    rec = _predict(elsewhere, "unet", image, tmp_path / "unet_run", "--run", unet.run_id)
    assert cv2.imread(str(tmp_path / "unet_run" / rec["mask"])).tolist() == cv2.imread(
        str(tmp_path / "unet_ws" / ws["mask"])).tolist()
    res = sh([sys.executable, "-m", "segdet.cli", "predict", "yolo", str(image), "--run", unet.run_id, "--out",
              str(tmp_path / "wrong")], elsewhere, check=False)
    assert res.returncode == 1 and "served unet model, not yolo" in res.stderr
    unknown = sh([sys.executable, "-m", "segdet.cli", "predict", "yolo", str(image), "--run", "models:/segdet-yolo/999",
                  "--out", str(tmp_path / "none")], elsewhere, check=False)
    assert unknown.returncode == 1 and "ERROR: models:/segdet-yolo/999" in unknown.stderr
    assert "Traceback" not in unknown.stderr
