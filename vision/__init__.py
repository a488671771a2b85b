"""Vision: boxes and matching, DETR, face recognition, pose regression, and a
vision-language model with a mixture-of-experts decoder."""
