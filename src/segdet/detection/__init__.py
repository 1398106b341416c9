"""Detection: boxes, selective-search proposals, R-CNN, the YOLO loss and decoding, and one evaluator."""
