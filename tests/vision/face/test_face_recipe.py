"""The face-openset recipe: a tiny end-to-end run, config validation, the quick run (slow)."""

import dataclasses
import json

import numpy as np
import pytest

from common.nn.resnet import ResNetConfig
from common.optim import OptimConfig
from vision.face.detect import DetectorConfig
from vision.recipes.face_openset import FaceOpensetConfig, run_face_openset

_OPT = OptimConfig(name="adam", learning_rate=3e-3)
_TINY_NET = dict(stem_channels=8, stem_kernel=3, stem_stride=2, stem_pool=False,
                 norm="groupnorm", norm_groups=4)
TINY = FaceOpensetConfig(
    scene_size=32, num_scenes=32, num_val_scenes=6, max_faces=2, min_face=5.0, max_face=10.0,
    detector=DetectorConfig(backbone=ResNetConfig(channels=(8, 8), blocks=(1, 1),
                                                  strides=(2, 2), **_TINY_NET),
                            head_channels=8),
    det_steps=4, det_batch=4, det_optim=_OPT, canvas_size=32, crop_size=32,
    num_train_ids=8, train_images_per_id=2, num_test_ids=6, test_images_per_id=2,
    num_pairs=20, heads=("arcface", "triplet"), embed_dim=8,
    embedder=ResNetConfig(channels=(8,), blocks=(1,), strides=(2,), **_TINY_NET),
    rec_steps=4, rec_batch=8, triplet_ids_per_batch=4, rec_optim=_OPT,
    no_alignment_runs=False, feature_ids=0, chunk_size=4, eval_batch=32, lfw_check=False)


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end():
    out = run_face_openset(TINY)
    assert set(out["table1_heads"]) == {"arcface", "triplet"}
    assert set(out["table2_alignment"]) == {"true landmarks", "predicted landmarks"}
    for row in [*out["table1_heads"].values(), *out["table2_alignment"].values()]:
        for key in ("accuracy", "tar_far1e-3", "rank1"):
            assert 0.0 <= row[key] <= 1.0
    assert 0.0 <= out["detection"]["ap"] <= 1.0 and out["detection"]["recall_iou50"] >= 0.0
    assert out["lfw_face_check"] == {}  # skipped here; the quick run measures it
    assert np.isfinite(out["test_landmark_nme"])
    json.dumps(out)  # the summary is plain data


@pytest.mark.parametrize("change, name", [
    (dict(crop_size=64), "crop_size"),
    (dict(heads=("arcface", "magic")), "heads"),
    (dict(heads=()), "heads"),
    (dict(rec_batch=10), "rec_batch"),
    (dict(rec_optim=OptimConfig(clip_norm=1.0)), "clip_norm"),
    (dict(scene_size=30), "scene_size"),
    (dict(alignment_head="nope"), "alignment_head"),
    (dict(test_images_per_id=1), "test_images_per_id"),
    (dict(gray_prob=1.5), "gray_prob"),
])
def test_config_validation_names_the_field(change, name):
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(TINY, **change).validate()


@pytest.mark.slow
def test_quick_recipe(tmp_path):
    from common.recipe import run_recipe

    run_dir, summary = run_recipe("face-openset", scale="quick", runs_root=tmp_path,
                                  progress=False)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert {"detections.png", "alignment.png", "roc.png", "features_2d.png"} <= set(
        saved["figures"])
    assert summary["detection"]["ap50"] > 0.8
    assert summary["table1_heads"]["arcface"]["accuracy"] > 0.6
