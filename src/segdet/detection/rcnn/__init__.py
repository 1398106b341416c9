"""R-CNN (Girshick et al., CVPR 2014) as published, in four cached steps.

1. **Region CNN** (:class:`RegionCNN`): every proposal, dilated by ``context`` pixels of surrounding image,
   is warped to ``crop_size`` x ``crop_size`` (all boxes of an image in one ``roi_align`` call), and a CNN
   fine-tuned as (N+1)-way classification (IoU >= 0.5 with a ground-truth box: that class, else background;
   mini-batches of 32 positives and 96 background regions) turns it into a feature vector (its penultimate
   layer).
2. **Features** (:func:`extract_features`): those vectors for every ground-truth box and proposal of the
   training images, written in chunks to disk so later steps stream them.
3. **SVMs and box regressors** (:func:`train_svms`): one linear SVM per class (scikit-learn), positives the
   ground-truth boxes, negatives proposals with IoU < 0.3 to every box of that class, refined by hard-negative
   mining; one Ridge regressor per class maps features of proposals with IoU >= 0.6 to the
   ``(dx, dy, dw, dh)`` targets of the paper's appendix C.
4. **Detection** (:class:`RCNNDetector`): warp + CNN, SVM scores, box regression, per-class NMS (IoU 0.3).

Modules: ``model`` (region CNN, warping), ``regions`` (labelling, fine-tuning batches, splits with their
proposals), ``train`` (fine-tuning), ``features`` (features on disk), ``svm`` (SVMs, box regressors,
operating thresholds), ``detect`` (the detector and its loading from the model files).
"""
