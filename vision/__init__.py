"""Vision: box geometry (``vision.boxes``), exact assignment (``vision.matching``), DETR
set prediction (``vision.detr``), COCO evaluation (``vision.coco``) and the synthetic
shapes data set (``vision.shapes``)."""
