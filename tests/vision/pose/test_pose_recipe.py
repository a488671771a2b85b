"""The ``pose-rle`` recipe end to end: a tiny run in the default suite, the quick scale
marked slow."""

import json

import pytest

import vision.recipes.pose_rle  # noqa: F401  (registers pose-rle)
from common.recipe import ConfigError, resolve_config, run_recipe

TINY = {"num_train": "48", "num_val": "12", "image_size": "48", "resolutions": "16",
        "heads": "rle", "steps": "3", "chunk_size": "3", "batch_size": "8", "eval_batch": "12",
        "figure_crops": "2", "model.head_channels": "4", "optim.warmup_steps": "1",
        "model.backbone.channels": "[4, 4, 4]", "model.backbone.stem_channels": "4",
        "model.backbone.norm_groups": "4", "model.flow.hidden": "4",
        "model.flow.num_pairs": "1", "model.backbone.conv_impl": "xla"}


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_tiny_run_writes_ap_and_figures(tmp_path):
    run_dir, summary = run_recipe("pose-rle", overrides=TINY, runs_root=tmp_path, progress=False)
    assert 0.0 <= summary["ap_rle_16"] <= 1.0 and "ap75_rle_16" in summary
    saved = json.loads((run_dir / "summary.json").read_text())
    assert set(saved["figures"]) == {"sigma_ellipses.png", "residual_density.png",
                                     "ap_vs_resolution.png"}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown pose head 'dsnt'"):
        resolve_config("pose-rle", overrides={"heads": "rle,dsnt"})
    with pytest.raises(ConfigError, match=r"resolutions\[0\]"):
        resolve_config("pose-rle", overrides={"resolutions": "20"})
    with pytest.raises(ConfigError, match="steps"):
        resolve_config("pose-rle", overrides={"steps": "0"})


@pytest.mark.slow
def test_quick_scale_rle_beats_l1_and_heatmaps_at_32_pixels(tmp_path):
    _, summary = run_recipe("pose-rle", runs_root=tmp_path, progress=False)
    assert summary["ap_rle_32"] > summary["ap_l1_32"]
    assert summary["ap_rle_32"] > summary["ap_heatmap_32"]
    assert all(0.0 <= summary[f"ap_{h}_{s}"] <= 1.0 for h in ("l1", "rle", "heatmap", "integral")
               for s in (32, 16))
