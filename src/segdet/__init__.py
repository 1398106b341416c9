"""segdet: reproducible UNet, R-CNN and YOLOv1 pipelines (DVC + MLflow)."""

__version__ = "0.1.0"
