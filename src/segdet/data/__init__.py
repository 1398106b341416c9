"""Datasets, manifests, formats (ISIC, Pascal VOC, COCO) and the synthetic generators."""
