"""Deterministic synthetic datasets that mimic ISIC 2018 Task 1 and Pascal VOC.

Two generators, one module each:

* :func:`segdet.data.synthetic.isic.generate_isic` -- dermoscopy-like skin-lesion photographs with a binary
  lesion mask (ISIC 2018 Task 1 file layout).
* :func:`segdet.data.synthetic.voc.generate_voc` -- cluttered detection scenes of five shape classes with
  Pascal VOC XML annotations (``JPEGImages`` / ``Annotations`` /
  ``ImageSets/Main``).

Determinism: every image gets its own random generator derived from
``np.random.SeedSequence([seed, kind_tag, index])``, so image ``i`` is identical
whatever the number of generated images, and the same arguments always produce
byte-identical files (JPEG via Pillow with fixed quality and chroma subsampling,
PNG via Pillow).

Across CPUs: the VOC data are the same bytes on every x86-64 machine, whatever
SIMD kernels NumPy and OpenCV dispatch to (AVX-512, AVX2, SSE), whichever libm
variant glibc picks and however many threads OpenCV runs: everything that reaches
a pixel is IEEE-754 basic arithmetic (see ``common``, "Portable arithmetic"; the JPEG
encoder's integer DCT is exact on every SIMD path too). The one libm use left is
inside NumPy's normal sampler (exp / log1p in the ziggurat's rare wedge and tail
branches), where a last-bit libm difference could change a file only with a
probability far below one in a billion. The ISIC generator keeps its library
kernels (float ``np.exp``, ``cv2.GaussianBlur``, ``cv2.resize``) so that its data
stay as they were: they are the same bytes on every CPU with AVX2 and FMA (any
x86-64 from 2013 on), but differ on an older CPU without AVX2 or with
``cv2.setUseOptimized(False)``.

Conventions used below: images are ``uint8`` arrays of shape ``(H, W, 3)`` in
RGB order (float work buffers are ``float32`` in ``[0, 255]``), masks are
``(H, W)`` arrays, coordinates are ``(x, y)`` pixel positions with the pixel
centre at integer coordinates.
"""
