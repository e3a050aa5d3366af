"""Building blocks of the inspection model: backbone and feature extraction, fine-tuning of its
tail, PatchCore, the linear head, calibration and the numpy scoring path shared with the export.

Each module does one job and knows nothing of ``InspectionModel``; ``linesight.vision.model``
assembles them. ``patchcore``, ``calibrate`` and ``scoring`` are numpy/scipy only, so the
torch-free export loader can use them.
"""
