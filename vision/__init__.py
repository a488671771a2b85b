"""Vision: box geometry (``vision.boxes``), exact assignment (``vision.matching``), DETR
set prediction (``vision.detr``), COCO evaluation (``vision.coco``), the synthetic
shapes data set (``vision.shapes``) and the MoE decoder language model of the
vision-language model (``vision.vlm``)."""
