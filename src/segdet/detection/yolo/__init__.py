"""YOLOv1 (Redmon et al., CVPR 2016): one forward pass per image over an S x S grid.

Modules: ``decode`` (grid geometry, class-specific scores, NMS), ``loss`` (equation 3 of the paper),
``train`` (data, model, schedule, validation, training), ``detect`` (the detector and its loading from a
checkpoint).
"""
