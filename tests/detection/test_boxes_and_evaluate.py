import math

import numpy as np
import pytest
import torch

from segdet.data.formats import coco_annotation, coco_box, coco_to_xyxy
from segdet.detection.boxes import decode, dilate, encode
from segdet.detection.evaluate import (
    NMS_CANDIDATES,
    choose_nms_iou,
    choose_thresholds,
    coco_metrics,
    evaluate_detections,
    match,
    operating_thresholds,
    passes,
    pr_table,
    suppress,
    voc_ap,
)


def test_encode_hand_computed_and_decode_inverts_it():
    p = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    g = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 x 20
    t = encode(p, g)[0]
    assert t.tolist() == pytest.approx([0.7, 0.2, math.log(2.0), 0.0])
    assert decode(p, t[None])[0].tolist() == pytest.approx(g[0].tolist())


def test_dilate_leaves_context_pixels_after_warping():
    box = torch.tensor([[10.0, 10.0, 50.0, 30.0]])  # 40 x 20
    # crop 64, context 4: the box maps to the central 56 px, so each side grows by 4/56 of the size
    d = dilate(box, 64, 4)[0].tolist()
    assert d == pytest.approx([10 - 40 * 4 / 56, 10 - 20 * 4 / 56, 50 + 40 * 4 / 56, 30 + 20 * 4 / 56])
    with pytest.raises(ValueError, match="context"):
        dilate(box, 64, 32)


def test_coco_box_conventions_hand_computed():
    assert coco_box([10.0, 10.0, 50.0, 30.0]) == [10.0, 10.0, 40.0, 20.0]
    assert coco_to_xyxy([10.0, 10.0, 40.0, 20.0]) == [10.0, 10.0, 50.0, 30.0]
    assert coco_annotation(3, 2, 1, (10.0, 10.0, 50.0, 30.0), crowd=True) == {
        "id": 3, "image_id": 2, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 20.0], "area": 800.0, "iscrowd": 1}


def test_voc_ap_all_point_interpolation_hand_computed():
    # detections: TP, FP, TP with 2 ground-truth boxes -> recall .5 .5 1, precision 1 .5 .667
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert voc_ap(np.array([]), np.array([])) == 0.0


def _gt():
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_matching_counts_duplicates_as_false_positives():
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 20, 20], "score": 0.8},  # duplicate -> FP
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.7},  # wrong place -> FP
        {"image_id": 2, "category_id": 1, "bbox": [52, 50, 30, 30], "score": 0.6},  # TP (IoU 0.875)
    ]
    scores, tp, n_gt = match(_gt(), dets, 1)
    assert scores.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert tp.tolist() == [True, False, False, True] and n_gt == 2
    ev = evaluate_detections(_gt(), dets, score_threshold=0.65)
    a = ev.per_class.set_index("class").loc["a"]
    # recall .5 .5 .5 1, precision 1 .5 .333 .5 -> AP = .5 * 1 + .5 * .5
    assert a["ap50"] == pytest.approx(0.75)
    assert (a["precision"], a["recall"]) == pytest.approx((1 / 3, 0.5))  # 3 detections >= 0.65, one TP
    b = ev.per_class.set_index("class").loc["b"]
    assert b["ap50"] == 0.0 and b["recall"] == 0.0
    assert ev.summary["map50"] == pytest.approx(0.375)
    assert ev.summary["precision"] == pytest.approx(1 / 3) and ev.summary["recall"] == pytest.approx(1 / 3)


def test_perfect_detections_score_one_with_pycocotools():
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in _gt()["annotations"]]
    ev = evaluate_detections(_gt(), dets, 0.5)
    assert ev.summary["map50"] == 1.0
    assert ev.summary["coco_map"] == pytest.approx(1.0) and ev.summary["coco_map50"] == pytest.approx(1.0)
    assert coco_metrics(_gt(), []) == {"coco_map": 0.0, "coco_map50": 0.0}


def test_pr_table_is_the_precision_envelope():
    curves = {"a": (np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))}
    table = pr_table(curves, points=3)
    assert table["recall"].tolist() == [0.0, 0.5, 1.0]
    assert table["precision"].tolist() == pytest.approx([1.0, 1.0, 2 / 3])


# ----------------------------------------------------------------------------------------------------------
# VOC difficult objects (written as iscrowd by the manifest stage): neither a hit nor a miss
# ----------------------------------------------------------------------------------------------------------


def _gt_with_difficult():
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},  # A
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 1},  # D
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},  # B
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 0},  # C
        ],
        "categories": [{"id": 1, "name": "a"}],
    }


DIFFICULT_DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 30], "score": 0.95},  # on difficult D: dropped
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # A: TP
    {"image_id": 2, "category_id": 1, "bbox": [85, 0, 10, 10], "score": 0.8},  # nothing: FP
    {"image_id": 1, "category_id": 1, "bbox": [52, 50, 30, 30], "score": 0.7},  # D again (IoU .875): dropped, not FP
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.6},  # B: TP; C is never found
]


def test_difficult_ground_truth_is_neither_hit_nor_miss():
    scores, tp, n_gt = match(_gt_with_difficult(), DIFFICULT_DETS, 1)
    assert n_gt == 3  # A, B, C; D is not counted
    assert scores.tolist() == [0.9, 0.8, 0.6] and tp.tolist() == [True, False, True]
    ev = evaluate_detections(_gt_with_difficult(), DIFFICULT_DETS, score_threshold=0.65)
    a = ev.per_class.set_index("class").loc["a"]
    # recall 1/3 1/3 2/3, precision 1 1/2 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9 (counting D: 0.65)
    assert a["ap50"] == pytest.approx(5 / 9)
    assert a["gt"] == 3 and a["detections"] == 2  # the two on D (scores .95 and .7) are not detections
    assert (a["precision"], a["recall"]) == pytest.approx((1 / 2, 1 / 3))  # >= 0.65: the TP on A and the FP
    assert ev.summary["ground_truth_boxes"] == 3
    # pycocotools ignores iscrowd boxes too: its AP50 (101-point) 56/101 against our all-point 5/9
    assert ev.summary["coco_map50"] == pytest.approx(56 / 101, abs=1e-6)
    assert ev.summary["map50"] == pytest.approx(ev.summary["coco_map50"], abs=0.01)


def test_difficult_handling_agrees_with_pycocotools():
    gt = _gt_with_difficult()
    gt["annotations"] = gt["annotations"][:2]  # image 1: A and the difficult D
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 30], "score": 0.9},  # on D: ignored
        {"image_id": 1, "category_id": 1, "bbox": [70, 0, 20, 20], "score": 0.85},  # FP
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.8},  # A: TP
    ]
    ev = evaluate_detections(gt, dets, score_threshold=0.5)
    # FP then TP with one GT box: precision 1/2 at recall 1 -> AP 0.5 for both (counting D as a hit: 0.83)
    assert ev.summary["map50"] == pytest.approx(0.5)
    assert ev.summary["coco_map50"] == pytest.approx(0.5)


def _three_objects_five_detections():
    """Class a: 3 objects (one per image); detections scored .9 hit, .8 miss, .7 hit, .6 hit, .5 miss."""
    gt = {"images": [{"id": i} for i in (1, 2, 3)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0,
                           "area": 400}
                          for i in (1, 2, 3)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    hit, miss = [10, 10, 20, 20], [60, 60, 20, 20]
    dets = [{"image_id": i, "category_id": 1, "bbox": b, "score": s}
            for i, b, s in [(1, hit, 0.9), (1, miss, 0.8), (2, hit, 0.7), (3, hit, 0.6), (2, miss, 0.5)]]
    return gt, dets


def test_operating_threshold_is_the_best_f1_cut_hand_computed():
    gt, dets = _three_objects_five_detections()
    # F1 = 2 TP / (detections + 3) at each cut: .9 -> 2/4, .8 -> 2/5, .7 -> 4/6, .6 -> 6/7 (best), .5 -> 6/8
    # class b has no ground truth: it keeps the fallback
    assert operating_thresholds(gt, dets, fallback=0.25) == [0.6, 0.25]
    # a class with ground truth but not a single hit keeps the fallback too
    assert operating_thresholds(gt, [d for d in dets if d["bbox"] != [10, 10, 20, 20]], fallback=-1.0) == [-1.0, -1.0]


def test_operating_threshold_never_splits_equal_scores():
    gt, dets = _three_objects_five_detections()
    # the miss now ties with the last hit at .6: cutting between them is impossible, so the cut at .6 takes
    # both (F1 = 6/8) and the best is .7 (F1 = 4/6 = 0.667 < 0.75): still .6
    dets[4]["score"] = 0.6
    assert operating_thresholds(gt, dets, fallback=0.0)[0] == 0.6
    # with two misses tied at .6, .6 gives 6/9 = 0.667 and .7 gives 4/6 = 0.667: the first best (.7) wins
    dets.append({"image_id": 3, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.6})
    assert operating_thresholds(gt, dets, fallback=0.0)[0] == 0.7


def test_choose_thresholds_reads_per_image_detections_in_manifest_order():
    gt, dets = _three_objects_five_detections()
    per_image = []
    for image_id in (1, 2, 3):
        mine = [d for d in dets if d["image_id"] == image_id]
        per_image.append({"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]),
                          "scores": torch.tensor([d["score"] for d in mine]),
                          "labels": torch.tensor([d["category_id"] for d in mine])})
    assert choose_thresholds(gt, per_image, fallback=0.25) == pytest.approx([0.6, 0.25])


def test_precision_and_recall_at_per_class_thresholds():
    gt, dets = _three_objects_five_detections()
    ev = evaluate_detections(gt, dets, [0.6, 0.3])
    row = ev.per_class.set_index("class").loc["a"]
    assert (row["detections"], row["precision"], row["recall"], row["score_threshold"]) == (4, 0.75, 1.0, 0.6)
    assert ev.summary["score_thresholds"] == {"a": 0.6, "b": 0.3} and "score_threshold" not in ev.summary
    assert (ev.summary["precision"], ev.summary["recall"]) == (0.75, 1.0)
    one = evaluate_detections(gt, dets, 0.75)
    assert one.summary["score_threshold"] == 0.75 and (one.summary["precision"], one.summary["recall"]) == (0.5, 1 / 3)
    with pytest.raises(ValueError, match="1 score thresholds for 2 classes"):
        evaluate_detections(gt, dets, [0.5])


def test_passes_applies_each_class_its_own_threshold():
    dets = {"scores": torch.tensor([0.5, 0.5, 0.2]), "labels": torch.tensor([1, 2, 2])}
    assert passes(dets, [0.6, 0.1]).tolist() == [False, True, True]
    assert passes(dets, 0.3).tolist() == [True, True, False]


# ----------------------------------------------------------------------------------------------------------
# imperfect detections: both evaluators against hand-computed values
# ----------------------------------------------------------------------------------------------------------


def _imperfect():
    """One class, three 100 x 100 images. Image 1: A and a crowd (difficult) region D; image 2: B and C;
    image 3: nothing. Detections, best first:

    ==== ===== ========================== ==========================================================
    name score where                      IoU
    ==== ===== ========================== ==========================================================
    d1   .95   image 3, no object there   -: a false positive ranked above every true positive
    d2   .90   A shifted 3 px right       (17 x 20) / (800 - 340) = 340 / 460 = 0.739
    d3   .85   A shifted 1.5 px right     (18.5 x 20) / (800 - 370) = 370 / 430 = 0.860: a duplicate
    d4   .80   exactly on the crowd D     ignored by both evaluators (neither hit nor miss)
    d5   .70   exactly on B               1
    -    -     C                          never detected: a miss
    ==== ===== ========================== ==========================================================
    """
    gt = {"images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},  # A
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 1},  # D
              {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},  # B
              {"id": 4, "image_id": 2, "category_id": 1, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 0},  # C
          ],
          "categories": [{"id": 1, "name": "a"}]}
    dets = [{"image_id": i, "category_id": 1, "bbox": b, "score": s} for i, b, s in [
        (3, [10, 10, 20, 20], 0.95),  # d1
        (1, [13, 10, 20, 20], 0.90),  # d2
        (1, [11.5, 10, 20, 20], 0.85),  # d3
        (1, [60, 60, 30, 30], 0.80),  # d4
        (2, [0, 0, 40, 40], 0.70),  # d5
    ]]
    return gt, dets


def test_voc_and_pycocotools_on_imperfect_detections_hand_computed():
    gt, dets = _imperfect()
    # VOC at IoU 0.5: d4 dropped (crowd); d1 FP, d2 TP (A), d3 FP (A already taken), d5 TP (B); 3 objects
    scores, tp, n_gt = match(gt, dets, 1)
    assert scores.tolist() == [0.95, 0.9, 0.85, 0.7] and tp.tolist() == [False, True, False, True] and n_gt == 3
    # recall 0 1/3 1/3 2/3, precision 0 1/2 1/3 1/2 -> envelope 1/2 up to recall 2/3 -> AP = 2/3 * 1/2 = 1/3
    ev = evaluate_detections(gt, dets, score_threshold=0.75)
    assert ev.summary["map50"] == pytest.approx(1 / 3)
    # >= 0.75: d1, d2, d3 (d4 is not a detection): one TP of three detections, one of three objects
    row = ev.per_class.set_index("class").loc["a"]
    assert (row["detections"], row["precision"], row["recall"]) == (3, pytest.approx(1 / 3), pytest.approx(1 / 3))
    # pycocotools, ten IoU thresholds .50:.05:.95, AP = mean over 101 recall points r = 0, .01, ... 1 of the
    # precision envelope at the first recall >= r (0 beyond the last recall reached):
    # - t = .50 ... .70 (5 thresholds): same sequence as VOC, FP TP FP TP -> envelope 1/2 for r <= 2/3
    #   (r = 0 ... 0.66: 67 points) -> AP = 67 * 0.5 / 101 = 33.5 / 101
    # - t = .75, .80, .85 (3): d2 (IoU .739) misses, so the duplicate d3 (IoU .860) takes A: FP FP TP TP,
    #   precision 0 0 1/3 1/2 -> envelope 1/2 up to 2/3 -> 33.5 / 101 again
    # - t = .90, .95 (2): only d5 hits: FP FP FP TP, precision 1/4 at recall 1/3 (34 points) -> 8.5 / 101
    # AP@[.5:.95] = (8 * 33.5 + 2 * 8.5) / (10 * 101) = 285 / 1010
    assert ev.summary["coco_map50"] == pytest.approx(33.5 / 101, abs=1e-9)
    assert ev.summary["coco_map"] == pytest.approx(285 / 1010, abs=1e-9)
    # the VOC matcher at the same stricter thresholds: at IoU .75 d2 misses and d3 takes A (FP FP TP TP,
    # envelope 1/2 up to recall 2/3 -> 1/3); at IoU .9 only d5 hits (precision 1/4 at recall 1/3 -> 1/12)
    _, tp75, _ = match(gt, dets, 1, iou_threshold=0.75)
    assert tp75.tolist() == [False, False, True, True]
    assert evaluate_detections(gt, dets, 0.5, iou_threshold=0.75).summary["map50"] == pytest.approx(1 / 3)
    assert evaluate_detections(gt, dets, 0.5, iou_threshold=0.9).summary["map50"] == pytest.approx(1 / 12)


def test_nms_iou_chosen_on_val_keeps_overlapping_objects_and_drops_duplicates():
    """Hand-computed: two objects of one class overlapping at IoU 60/140 = 0.43 (image 1), and a third object
    with a duplicate detection at IoU 70/130 = 0.54 (image 2). NMS at 0.3 and 0.4 loses the second object and
    the duplicate: TP TP (recall 2/3) -> AP 0.667; at 0.5 keeps the object and drops the duplicate: AP 1; at 0.6
    and 0.7 keeps both: TP TP FP TP -> AP 2/3 + 1/3 * 3/4 = 0.917. The best val mAP@0.5 picks 0.5."""
    gt = {"images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [coco_annotation(1, 1, 1, (0.0, 0.0, 10.0, 10.0)),
                          coco_annotation(2, 1, 1, (4.0, 0.0, 14.0, 10.0)),
                          coco_annotation(3, 2, 1, (20.0, 20.0, 30.0, 30.0))]}
    unsuppressed = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0]]),
         "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])},
        {"boxes": torch.tensor([[20.0, 20.0, 30.0, 30.0], [23.0, 20.0, 33.0, 30.0]]),
         "scores": torch.tensor([0.95, 0.85]), "labels": torch.tensor([1, 1])},
    ]
    best, tried, dets = choose_nms_iou(gt, unsuppressed, max_detections=100)
    assert best == 0.5 and list(tried) == list(NMS_CANDIDATES)
    assert [tried[t] for t in NMS_CANDIDATES] == pytest.approx([2 / 3, 2 / 3, 1.0, 11 / 12, 11 / 12])
    assert [d["scores"].tolist() for d in dets] == [pytest.approx([0.9, 0.8]), pytest.approx([0.95])]
    # another class's box is never suppressed by this one's, and max_detections caps each image after NMS
    two = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2), "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([1, 2])}]
    gt2 = {**gt, "images": gt["images"][:1], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    assert [len(d["scores"]) for d in choose_nms_iou(gt2, two, max_detections=100)[2]] == [2]
    assert [len(d["scores"]) for d in choose_nms_iou(gt2, two, max_detections=1)[2]] == [1]


def test_box_voting_averages_the_suppressed_boxes_of_the_class_by_exp_score():
    """Hand-computed: the kept box (0, 0, 10, 10) at score ln 3 and a box of its class (0, 0, 10, 12) at score 0
    (IoU 100 / 120 = 0.83, suppressed by NMS) vote with weights 3 and 1: (0, 0, 10, 10.5). A box of another
    class on the same spot and one of the class at IoU 0.25 (0, 0, 10, 40) keep out of the vote, and their own
    votes are themselves."""
    dets = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0],
                                   [0.0, 0.0, 10.0, 40.0]]),
            "scores": torch.tensor([math.log(3.0), 0.0, 5.0, -1.0]), "labels": torch.tensor([1, 1, 2, 1])}
    plain = suppress(dets, 0.3, 100)
    assert plain["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 40.0]]
    voted = suppress(dets, 0.3, 100, vote_iou=0.5)
    assert voted["labels"].tolist() == [2, 1, 1] and voted["scores"].tolist() == pytest.approx([5.0, math.log(3.0), -1.0])
    assert voted["boxes"].tolist() == [pytest.approx([0.0, 0.0, 10.0, 10.0]), pytest.approx([0.0, 0.0, 10.0, 10.5]),
                                       pytest.approx([0.0, 0.0, 10.0, 40.0])]
    # at vote IoU 0.2 the tall box (IoU 0.25 with the kept one, 0.3 with the other) joins: weights 3, 1, 1/e
    low = suppress(dets, 0.3, 100, vote_iou=0.2)["boxes"][1].tolist()
    w = [3.0, 1.0, math.exp(-1.0)]
    assert low == pytest.approx([0.0, 0.0, 10.0, (10 * w[0] + 12 * w[1] + 40 * w[2]) / sum(w)])


def _reference_voc_match(gt, dets, category_id, iou_threshold):
    """The VOC devkit's greedy rule in plain Python (no torch, no numpy): detections best first, each takes the
    ground-truth box of its image with the highest IoU (the first of equal ones); a difficult box leaves it out."""
    def iou(a, b):
        ax1, ay1, aw, ah = a
        bx1, by1, bw, bh = b
        w = max(0.0, min(ax1 + aw, bx1 + bw) - max(ax1, bx1))
        h = max(0.0, min(ay1 + ah, by1 + bh) - max(ay1, by1))
        return w * h / (aw * ah + bw * bh - w * h)

    boxes = [a for a in gt["annotations"] if a["category_id"] == category_id]
    taken, out = set(), []
    for d in sorted((d for d in dets if d["category_id"] == category_id), key=lambda d: -d["score"]):
        mine = [a for a in boxes if a["image_id"] == d["image_id"]]
        if not mine:
            out.append((d["score"], False))
            continue
        ious = [iou(d["bbox"], a["bbox"]) for a in mine]
        a = mine[ious.index(max(ious))]
        if max(ious) < iou_threshold:
            out.append((d["score"], False))
        elif a["iscrowd"]:
            continue
        else:
            out.append((d["score"], a["id"] not in taken))
            taken.add(a["id"])
    return [s for s, _ in out], [t for _, t in out], sum(1 for a in boxes if not a["iscrowd"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_agrees_with_a_plain_python_voc_matcher_on_crowded_random_scenes(seed):
    """Many overlapping boxes and detections, duplicates, difficult boxes and images without any box of a class."""
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i} for i in range(1, 13)], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": []}
    dets = []
    for image_id in range(1, 13):
        for _ in range(int(rng.integers(0, 9))):
            x, y, w, h = (float(v) for v in np.round(rng.uniform([0, 0, 8, 8], [80, 80, 40, 40]), 1))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                      "category_id": int(rng.integers(1, 3)), "area": w * h,
                                      "iscrowd": int(rng.random() < 0.15)})
            for _ in range(int(rng.integers(0, 4))):  # detections near it, of either class
                j = np.round(rng.normal(0, 2, 4), 1)
                dets.append({"image_id": image_id, "category_id": int(rng.integers(1, 3)),
                             "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                             "score": float(np.round(rng.random(), 3))})
        dets += [{"image_id": image_id, "category_id": 1, "bbox": [float(v) for v in rng.uniform([0, 0, 5, 5], [90, 90, 30, 30])],
                  "score": float(np.round(rng.random(), 3))} for _ in range(3)]  # background
    hits = misses = 0
    for category_id in (1, 2):
        for iou_threshold in (0.5, 0.75):
            scores, tp, n_gt = match(gt, dets, category_id, iou_threshold)
            ref_scores, ref_tp, ref_n = _reference_voc_match(gt, dets, category_id, iou_threshold)
            assert scores.tolist() == ref_scores and tp.tolist() == ref_tp and n_gt == ref_n
            hits, misses = hits + sum(ref_tp), misses + len(ref_tp) - sum(ref_tp)
    assert hits > 10 and misses > 10  # the scenes give both


def test_evaluation_without_coco_metrics_gives_the_same_voc_figures():
    gt, dets = _imperfect()
    full, voc_only = evaluate_detections(gt, dets, 0.75), evaluate_detections(gt, dets, 0.75, coco=False)
    assert "coco_map" in full.summary and "coco_map" not in voc_only.summary and "coco_map50" not in voc_only.summary
    assert {k: v for k, v in full.summary.items() if not k.startswith("coco")} == voc_only.summary
