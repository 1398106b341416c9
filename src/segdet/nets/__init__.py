"""Networks: UNet, YOLOv1 and their backbones; checkpoint save/load and weight transfer."""
