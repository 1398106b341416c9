import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from segdet.detection.rcnn.detect import RCNNDetector
from segdet.detection.rcnn.features import extract_features, iter_chunks
from segdet.detection.rcnn.model import RegionCNN, normalise, warp
from segdet.detection.rcnn.regions import RegionBatches, label_regions
from segdet.detection.rcnn.svm import ABSENT_BIAS, _Reservoir, load_svm, save_svm, train_svms
from segdet.nets.weights import transfer_weights
from segdet.sections import RcnnSvmConfig


def test_region_cnn_shapes_and_torchvision_names():
    for backbone, dim in (("small", 256), ("alexnet", 4096)):
        m = RegionCNN(backbone, num_classes=5).eval()
        x = torch.randn(2, 3, 64, 64)
        assert m.embed(x).shape == (2, dim) and m(x).shape == (2, 6)
    # torchvision's ImageNet AlexNet names load; only the 1000-way layer is skipped and reported
    from torchvision.models import alexnet

    report = transfer_weights(RegionCNN("alexnet", 5), alexnet(weights=None).state_dict())
    assert report.mismatched == [("classifier.6.weight", (1000, 4096), (6, 4096)), ("classifier.6.bias", (1000,), (6,))]
    assert not report.missing and not report.unexpected
    with pytest.raises(ValueError, match="Available options are: small, alexnet, vgg16"):
        RegionCNN("resnet18", 2)


def test_cpu_feature_blocks_fit_the_first_layer_output_in_the_budget():
    # first-layer output per region, by hand: small 16 x 48 x 48 x 4 B = 147456 -> 32 MiB / 147456 = 227 -> 128;
    # 16 x 227 x 227 x 4 = 3297856 -> 10 -> 8; AlexNet conv1 (11x11, stride 4, pad 2) 64 x 56 x 56 x 4 -> 41 -> 32
    assert RegionCNN("small", 5).cpu_block(48) == 128
    assert RegionCNN("small", 5).cpu_block(227) == 8
    assert RegionCNN("alexnet", 5).cpu_block(227) == 32
    assert RegionCNN("small", 5).cpu_block(227, element_size=2) == 16  # bfloat16 activations: twice the regions


def test_cpu_features_run_in_blocks_with_the_features_of_one_pass(monkeypatch):
    import segdet.detection.rcnn.model as model_module

    torch.manual_seed(0)
    m = RegionCNN("small", 5).eval()
    for mod in m.modules():  # running statistics other than the identity, so the folded norms matter
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 3, 32, 32)
    one_pass = m.embed(x).detach()  # autograd on: never blocked
    monkeypatch.setattr(model_module, "CPU_BLOCK_BYTES", 2 * 16 * 32 * 32 * 4)  # two regions' first-layer output
    sizes = []
    inner = m._embed
    monkeypatch.setattr(m, "_embed", lambda part: sizes.append(len(part)) or inner(part))
    with torch.inference_mode():
        blocked = m.embed(x)
    assert sizes == [2, 2, 1]
    torch.testing.assert_close(blocked, one_pass, atol=1e-5, rtol=1e-5)


def test_warp_of_an_exact_box_is_the_pixels_and_context_pads_with_the_mean():
    y, x = torch.meshgrid(torch.arange(40), torch.arange(60), indexing="ij")
    image = torch.stack([x + 2 * y + 10 * c for c in range(3)]).to(torch.uint8)  # linear: sub-samples average exactly
    boxes = torch.tensor([[0.0, 0.0, 60.0, 40.0], [10.0, 5.0, 30.0, 25.0]])
    crops = warp(image, boxes, crop_size=20, context=0)
    assert crops.shape == (2, 3, 20, 20) and crops.dtype == torch.float32
    # box 2 is exactly 20 x 20 pixels: warped without context it is the pixels themselves, normalised
    torch.testing.assert_close(crops[1], normalise(image[:, 5:25, 10:30]), atol=1e-5, rtol=0)
    # context pads with the image mean (0 once normalised) outside the image
    white = torch.full((3, 40, 60), 255, dtype=torch.uint8)
    padded = warp(white, torch.tensor([[0.0, 0.0, 60.0, 40.0]]), crop_size=20, context=2)
    assert padded[0, :, 0, 0].abs().max() < 0.01 and (padded[0, :, 10, 10] - normalise(white)[:, 0, 0]).abs().max() < 1e-5


@pytest.mark.parametrize("crop", [48, 227])
@pytest.mark.parametrize("sampling", [1, 2])
def test_cpu_warp_matches_batched_roi_align(crop, sampling):
    """The CPU warp (OpenCV, uint8) gives roi_align's samples: the pipeline's warp on the GPU. Each box is sampled
    with its own count (``sampling_counts``: 1 for an enlarged box, up to ``sampling`` for a shrunk one), so the
    reference is roi_align called with each count on its boxes. Tolerance: uint8 rounding (1/255 = 0.017 once
    normalised, twice with 2 samples) and OpenCV's 1/32-pixel bilinear weights; boxes cross every border, some far
    outside, some smaller than a pixel per output pixel (enlarged)."""
    import cv2
    from torchvision.ops import roi_align

    from segdet.detection.boxes import dilate
    from segdet.detection.rcnn.model import sampling_counts, warp_roi_align

    g = torch.Generator().manual_seed(crop + sampling)
    rgb = cv2.GaussianBlur((torch.rand(120, 160, 3, generator=g) * 255).to(torch.uint8).numpy(), (5, 5), 1.5)
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    xy = torch.rand(300, 2, generator=g) * torch.tensor([200.0, 160.0]) - 20
    wh = torch.rand(300, 2, generator=g) * 90 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    ours = warp(image, boxes, crop, context=crop * 16 / 227, sampling_ratio=sampling)
    rois = dilate(boxes, crop, crop * 16 / 227)
    counts = sampling_counts(rois, crop, sampling)
    ref = warp_roi_align(normalise(image), rois, crop, counts)  # the GPU's warp, here on the CPU
    one_by_one = [roi_align(normalise(image)[None], [rois[k : k + 1]], output_size=(crop, crop), spatial_scale=1.0,
                            sampling_ratio=int(counts[k]), aligned=True)[0] for k in (0, 1, 2, len(rois) - 1)]
    torch.testing.assert_close(ref[[0, 1, 2, len(rois) - 1]], torch.stack(one_by_one))  # grouped calls keep the order
    diff = (ours - ref).abs()
    assert diff.mean() < 0.01, diff.mean()  # a uint8 rounding alone averages 0.25 / 255 / 0.226 = 0.0043
    # larger differences only where a sample falls on roi_align's cut-off one pixel outside the image, which
    # OpenCV's 1/32-pixel coordinates can put on either side: a few pixels in ten thousand
    assert (diff > 0.05).float().mean() < 1e-3, (diff > 0.05).float().mean()
    if sampling == 2:
        # one sample for an enlarged box is what roi_align's 2 x 2 average in its sub-pixel bin gives (bilinear
        # interpolation is exact within a pixel): on average as close to sampling_ratio=2 everywhere as rounding
        fixed = roi_align(normalise(image)[None], [rois], output_size=(crop, crop), spatial_scale=1.0,
                          sampling_ratio=2, aligned=True)
        assert (ours - fixed).abs().mean() < 0.01


def test_sampling_counts_follow_the_box_size():
    from segdet.detection.rcnn.model import sampling_counts

    # crop 48: sides 10 and 48 (enlarged or 1:1) -> 1 sample; 49 and 96 -> 2; 200 -> ceil(200/48) = 5, capped at 2;
    # the longer side decides (a 10 x 60 box is shrunk along y)
    rois = torch.tensor([[0, 0, 10, 10], [0, 0, 48, 48], [0, 0, 49, 20], [5, 5, 101, 101], [0, 0, 200, 200],
                         [0, 0, 10, 60]], dtype=torch.float32)
    assert sampling_counts(rois, 48, 2).tolist() == [1, 1, 2, 2, 2, 2]
    assert sampling_counts(rois, 48, 4).tolist() == [1, 1, 2, 2, 4, 2]
    assert sampling_counts(rois, 48, 1).tolist() == [1] * 6


def test_label_regions_hand_computed():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [20.0, 20.0, 40.0, 30.0], [50.0, 50.0, 60.0, 60.0]])
    out = label_regions(boxes, gt, torch.tensor([2, 1]), num_classes=2)
    assert out["iou"].tolist() == pytest.approx([100 / 120, 0.5, 0.0])
    assert out["label"].tolist() == [2, 1, 0]
    assert out["iou_class"].flatten().tolist() == pytest.approx([0.0, 100 / 120, 0.5, 0.0, 0.0, 0.0])
    assert out["gt_box"][1].tolist() == [20.0, 20.0, 30.0, 30.0]


def test_region_batches_hold_32_positives_and_96_background():
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    regions = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 40.0, 40.0], [1.0, 1.0, 9.0, 9.0]])
    labels = torch.tensor([1, 0, 2])
    batches = RegionBatches([image], [regions], [labels], fg=32, bg=96, batches=3, crop_size=16, context=2)
    out = list(batches)
    assert len(out) == 3
    crops, lab = out[0]
    assert crops.shape == (128, 3, 16, 16)
    assert int((lab > 0).sum()) == 32 and int((lab == 0).sum()) == 96
    with pytest.raises(ValueError, match="needs positive and background regions"):
        RegionBatches([image], [regions[1:2]], [labels[1:2]], fg=1, bg=1, batches=1, crop_size=16, context=2)


class _Identity(RegionCNN):
    """A 'CNN' whose features are the mean colour of the warped region (3 numbers): SVM-separable scenes."""

    def __init__(self, num_classes):
        super().__init__("small", num_classes)
        self.feature_dim = 3

    def embed(self, x):
        return x.mean(dim=(2, 3))


def _scene(rng, colours):
    """An 80 x 80 grey image with one 20 x 20 square per class, coloured by class; GT and proposals."""
    image = torch.full((3, 80, 80), 128, dtype=torch.uint8)
    gt, labels = [], []
    for c, colour in enumerate(colours, 1):
        x, y = rng.integers(0, 60, 2)
        image[:, y:y + 20, x:x + 20] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
        gt.append([x, y, x + 20, y + 20])
        labels.append(c)
    gt = torch.tensor(gt, dtype=torch.float32)
    jitter = torch.from_numpy(rng.normal(0, 1.5, (len(gt) * 6, 4)).astype(np.float32))
    props = torch.cat([gt.repeat(6, 1) + jitter, torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 80.0, 80.0]])])
    return image, props.clamp(0, 80), gt, torch.tensor(labels)


def test_features_svms_and_detector_find_coloured_squares(tmp_path):
    rng = np.random.default_rng(0)
    colours = [(250, 20, 20), (20, 20, 250)]
    items = [_scene(rng, colours) for _ in range(12)]
    model = _Identity(2)
    meta = extract_features(model, iter(items), tmp_path / "f", crop_size=16, context=0, device=torch.device("cpu"),
                            chunk_images=5, progress=False)
    assert meta["images"] == 12 and meta["chunks"] == 3 and meta["dim"] == 3
    chunk = next(iter_chunks(tmp_path / "f"))
    assert chunk["features"].dtype == np.float16 and chunk["is_gt"].sum() == 10  # 5 images x 2 boxes

    settings = RcnnSvmConfig(C=1.0, rounds=1, init_negatives=50, max_negatives=200, reg_alpha=1.0)
    arrays = train_svms(tmp_path / "f", ["red", "blue"], settings, progress=False)
    assert arrays["svm_weight"].shape == (2, 3) and arrays["reg_weight"].shape == (2, 4, 3)
    # regression samples: proposals whose best ground truth (torchvision IoU) is of the class with IoU >= 0.6
    expected = [0, 0]
    for _, props, gt, labels in items:
        best, j = box_iou(props, gt).max(1)
        for c in labels[j[best >= 0.6]].tolist():
            expected[c - 1] += 1
    assert list(arrays["positives"]) == [12, 12] and list(arrays["regression_samples"]) == expected == [71, 72]
    save_svm(tmp_path / "svm.npz", arrays)
    loaded = load_svm(tmp_path / "svm.npz")  # allow_pickle=False
    assert [str(c) for c in loaded["classes"]] == ["red", "blue"]

    detector = RCNNDetector(model, loaded, crop_size=16, context=0, device=torch.device("cpu"), min_score=0.0,
                            nms_iou=0.3)
    image, props, gt, labels = _scene(np.random.default_rng(99), colours)
    dets, secs = detector.detect(image, props)
    assert set(secs) == {"warp_cnn", "svm_regression", "nms"}
    assert sorted(dets["labels"].tolist()) == [1, 2]  # one detection per square after NMS
    for box, lab in zip(dets["boxes"], dets["labels"], strict=True):
        assert box_iou(box[None], gt[lab - 1][None]).item() > 0.5


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_class_without_training_boxes_is_never_detected_and_the_others_still_train(tmp_path, caplog):
    # a class listed but absent from the train split (a random split, a category only in test): the stage used
    # to stop at rcnn_svm, after proposals, fine-tuning and features; now that class alone goes without an SVM
    rng = np.random.default_rng(0)
    colours = [(250, 20, 20), (20, 20, 250)]
    items = [_scene(rng, colours) for _ in range(12)]
    model = _Identity(3)
    extract_features(model, iter(items), tmp_path / "f", crop_size=16, context=0, device=torch.device("cpu"),
                     chunk_images=5, progress=False)
    settings = RcnnSvmConfig(C=1.0, rounds=1, init_negatives=50, max_negatives=200, reg_alpha=1.0)
    with caplog.at_level("WARNING", logger="segdet.detection.rcnn.svm"):
        arrays = train_svms(tmp_path / "f", ["red", "blue", "green"], settings, progress=False)
    assert "no training box of class 'green'" in caplog.text
    assert list(arrays["positives"]) == [12, 12, 0] and list(arrays["negatives"])[2] == 0
    assert not arrays["svm_weight"][2].any() and arrays["svm_bias"][2] == ABSENT_BIAS
    detector = RCNNDetector(model, arrays, crop_size=16, context=0, device=torch.device("cpu"), min_score=-2.0,
                            nms_iou=0.3)
    image, props, gt, labels = _scene(np.random.default_rng(99), colours)
    dets, _ = detector.detect(image, props)
    assert 3 not in dets["labels"].tolist()  # not even down to the lowest reported score
    best = {lab: max(box_iou(b[None], gt[lab - 1][None]).item() for b, la in zip(dets["boxes"], dets["labels"],
                                                                              strict=True) if la == lab)
            for lab in (1, 2)}
    assert min(best.values()) > 0.5, best


# ----------------------------------------------------------------------------------------------------------
# hard-negative mining and box regression do what they are for
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def square_features(tmp_path_factory):
    """Features (mean colour, :class:`_Identity`) of 12 two-square scenes; and every negative of each class:
    a proposal with IoU < 0.3 (``neg_iou``) with every object of that class."""
    rng = np.random.default_rng(0)
    items = [_scene(rng, [(250, 20, 20), (20, 20, 250)]) for _ in range(12)]
    folder = tmp_path_factory.mktemp("feat") / "f"
    extract_features(_Identity(2), iter(items), folder, crop_size=16, context=0, device=torch.device("cpu"),
                     chunk_images=5, progress=False)
    negatives = [[], []]
    for chunk in iter_chunks(folder):
        for c in range(2):
            neg = ~chunk["is_gt"] & (chunk["iou_class"][:, c].astype(np.float32) < 0.3)
            negatives[c].append(chunk["features"][neg].astype(np.float32))
    return folder, [np.concatenate(n) for n in negatives]


def _false_positives(arrays, negatives):
    """How many training negatives each class's SVM scores >= 0 (calls an object)."""
    x = [n * arrays["feature_scale"] for n in negatives]
    return [int((x[c] @ arrays["svm_weight"][c] + arrays["svm_bias"][c] >= 0).sum()) for c in range(2)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_hard_negative_mining_adds_negatives_and_removes_false_positives(square_features):
    folder, negatives = square_features
    assert [len(n) for n in negatives] == [84, 83]
    settings = dict(C=1.0, init_negatives=2, max_negatives=200, reg_alpha=1.0)
    # without mining the SVMs see 2 random negatives per class and score some of the other ~80 as objects
    plain = train_svms(folder, ["red", "blue"], RcnnSvmConfig(rounds=0, **settings), progress=False)
    assert list(plain["negatives"]) == [2, 2] and list(plain["hard_negatives_added"]) == [0, 0]
    before = _false_positives(plain, negatives)
    assert sum(before) >= 10, before
    # one mining round: the negatives inside the margin join the cache, and the refit SVMs reject them all
    mined = train_svms(folder, ["red", "blue"], RcnnSvmConfig(rounds=1, **settings), progress=False)
    assert (mined["negatives"] > 2 * plain["negatives"]).all(), mined["negatives"]
    assert (mined["hard_negatives_added"] > 0).all()
    assert _false_positives(mined, negatives) == [0, 0]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_hard_negatives_added_counts_only_new_negatives(square_features):
    folder, negatives = square_features
    # init_negatives >= every negative: the first cache already holds all of them, so mining can add none
    settings = RcnnSvmConfig(C=1.0, rounds=1, init_negatives=1000, max_negatives=1000, reg_alpha=1.0)
    arrays = train_svms(folder, ["red", "blue"], settings, progress=False)
    assert (arrays["negatives"] <= np.array([len(n) for n in negatives])).all()
    assert list(arrays["hard_negatives_added"]) == [0, 0]


class _Pooled(RegionCNN):
    """A 'CNN' whose features are the warped region average-pooled to 4 x 4 (48 numbers): where the square
    lies in the region, which a linear regressor can turn into a box correction."""

    def __init__(self, num_classes):
        super().__init__("small", num_classes)
        self.feature_dim = 48

    def embed(self, x):
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


def _loose_scene(rng, colours, k=6):
    """Two 20 x 20 squares that do not overlap; ``k`` proposals per square 1.2 times too large (24 x 24, IoU
    400 / 576 = 0.69 when centred) and shifted by N(0, 2) px, and two background boxes."""
    image = torch.full((3, 80, 80), 128, dtype=torch.uint8)
    gt = []
    for colour in colours:
        while True:
            x, y = (int(v) for v in rng.integers(5, 55, 2))
            if all(abs(x - g[0]) >= 22 or abs(y - g[1]) >= 22 for g in gt):
                break
        image[:, y:y + 20, x:x + 20] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
        gt.append([x, y, x + 20, y + 20])
    gt = torch.tensor(gt, dtype=torch.float32)
    centre = ((gt[:, :2] + gt[:, 2:]) / 2).repeat_interleave(k, 0)
    centre = centre + torch.from_numpy(rng.normal(0, 2.0, centre.shape).astype(np.float32))
    props = torch.cat([centre - 12, centre + 12], 1)
    props = torch.cat([props, torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 80.0, 80.0]])])
    return image, props, gt, torch.arange(1, len(colours) + 1)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_box_regression_moves_proposals_onto_the_objects(tmp_path):
    colours = [(250, 20, 20), (20, 20, 250)]
    rng = np.random.default_rng(0)
    model = _Pooled(2)
    extract_features(model, iter([_loose_scene(rng, colours) for _ in range(12)]), tmp_path / "f", crop_size=16,
                     context=0, device=torch.device("cpu"), chunk_images=5, progress=False)
    arrays = train_svms(tmp_path / "f", ["red", "blue"],
                        RcnnSvmConfig(C=1.0, rounds=1, init_negatives=50, max_negatives=200, reg_alpha=1.0),
                        progress=False)
    detector = RCNNDetector(model, arrays, crop_size=16, context=0, device=torch.device("cpu"), min_score=-1e9,
                            nms_iou=0.3)
    before, after = [], []
    held_out = np.random.default_rng(99)
    for _ in range(4):
        image, props, gt, _ = _loose_scene(held_out, colours)
        for k in range(12):  # proposal k belongs to square k // 6 (class k // 6 + 1)
            c = k // 6
            dets, _ = detector.detect(image, props[k:k + 1])  # one proposal: its regressed box for each class
            box = dets["boxes"][dets["labels"] == c + 1]
            before.append(box_iou(props[k:k + 1], gt[c:c + 1]).item())
            after.append(box_iou(box, gt[c:c + 1]).item())
    before, after = np.array(before), np.array(after)
    # the proposals average IoU ~0.67 with their square; regressed, they must land far closer
    assert before.mean() < 0.7 and after.mean() > before.mean() + 0.2, (before.mean(), after.mean())
    assert (after > before).mean() >= 0.95


def test_written_features_are_each_regions_own_across_batch_and_chunk_boundaries(tmp_path):
    """extract_features writes each region the features of its own crop: the same as embedding its image alone,
    for images with more, fewer and no regions than a batch, across chunk boundaries."""
    from segdet.detection.rcnn.features import embed_regions

    rng = np.random.default_rng(3)
    items = []
    for k in (700, 0, 300, 1, 530):  # crosses batch boundaries, and an image with no regions at all
        image = torch.from_numpy(rng.integers(0, 256, (3, 60, 70), dtype=np.uint8))
        xy = torch.from_numpy(rng.uniform(0, 40, (k, 2)).astype(np.float32))
        props = torch.cat([xy, xy + torch.from_numpy(rng.uniform(4, 20, (k, 2)).astype(np.float32))], 1)
        items.append((image, props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
    model = _Identity(2)
    meta = extract_features(model, iter(items), tmp_path / "f", crop_size=16, context=0, device=torch.device("cpu"),
                            chunk_images=2, progress=False)
    assert meta["regions"] == 1531 and meta["images"] == 5
    chunks = list(iter_chunks(tmp_path / "f"))
    got = np.concatenate([c["features"] for c in chunks]).astype(np.float32)
    image_of = np.concatenate([c["image"] for c in chunks])
    for i, (image, props, _, _) in enumerate(items):
        alone = embed_regions(model, image, props, 16, 0, torch.device("cpu")).numpy()
        np.testing.assert_allclose(got[image_of == i], alone.astype(np.float16).astype(np.float32), rtol=0, atol=1e-2)
        assert (image_of == i).sum() == len(props)


@pytest.mark.parametrize(("n", "expected"), [
    (0, []), (1, [16]), (15, [16]), (16, [16]), (17, [16, 16]), (300, [256, 32, 16]),
    (511, [256, 128, 64, 32, 16, 16]), (512, [512]), (700, [512, 128, 32, 16, 16]), (1031, [512, 512, 16])])
def test_per_image_batches_come_in_a_few_sizes_and_cover_every_region(n, expected):
    """embed_regions' batch sizes (512, then the powers of two of the rest down to 16, the last padded): a
    handful of shapes whatever the number of regions, at most 15 padded crops (worked out by hand: 700 = 512 +
    128 + 32 + 16 + 12 padded to 16)."""
    from segdet.detection.rcnn.features import batch_sizes

    sizes = batch_sizes(n)
    assert sizes == expected
    assert n <= sum(sizes) < n + 16


def test_padded_batches_give_each_region_its_own_features():
    from segdet.detection.rcnn.features import embed_regions

    rng = np.random.default_rng(5)
    image = torch.from_numpy(rng.integers(0, 256, (3, 50, 60), dtype=np.uint8))
    xy = torch.from_numpy(rng.uniform(0, 30, (531, 2)).astype(np.float32))
    boxes = torch.cat([xy, xy + 12], 1)
    got = embed_regions(_Identity(2), image, boxes, 16, 0, torch.device("cpu"))
    alone = torch.cat([embed_regions(_Identity(2), image, boxes[i:i + 1], 16, 0, torch.device("cpu"))
                       for i in (0, 300, 512, 530)])
    assert got.shape == (531, 3)
    torch.testing.assert_close(got[[0, 300, 512, 530]], alone, atol=1e-5, rtol=0)


def test_svm_sample_of_a_stream_does_not_keep_the_chunks_it_came_from():
    """The SVMs' first negatives and the regression samples are uniform samples of the streamed feature chunks
    (Algorithm R): a sampled row kept as a view of its chunk would keep the whole chunk in memory, so the memory of
    rcnn_svm would grow with the training set. A 1000-row chunk: once the caller drops it, it is freed, while the
    sample keeps its rows' values; the first rows fill the sample, as Algorithm R does."""
    sample = _Reservoir(3, np.random.default_rng(0))
    chunk = np.arange(4000, dtype=np.float32).reshape(1000, 4).copy()  # owns its memory, as a read chunk does
    first = chunk[:3].copy()
    alive = weakref.ref(chunk)
    sample.add(chunk[:3])
    del chunk
    gc.collect()
    assert alive() is None
    assert np.array_equal(sample.array(4), first) and sample.seen == 3
