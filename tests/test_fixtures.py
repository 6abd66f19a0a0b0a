"""`so101-deploy fixtures`: deterministic random-weight files in the real checkpoint formats."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from so101_deploy.tools.fixtures import write_depth_fixtures, write_fixture_snapshots, write_seg_checkpoint


def test_seg_checkpoint_is_a_plain_lightning_dict(tmp_path):
    path = write_seg_checkpoint(tmp_path / "seg" / "best.ckpt")
    ckpt = torch.load(path, weights_only=True)  # plain types only
    assert {"state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version"} <= set(ckpt)
    assert ckpt["hyper_parameters"] == {"num_classes": 6, "lr": 1e-4, "weight_decay": 1e-4, "img_height": 480,
                                        "img_width": 640, "loss_type": "soft_iou"}
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"]}
    assert prefixes == {"backbone", "lateral_convs", "output_convs", "seg_head"}
    assert sum(v.numel() for k, v in ckpt["state_dict"].items() if "running" not in k and "num_batches" not in k) \
        == 846_838  # backbone 682,608 + FPN decoder 164,230


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    state = torch.get_rng_state()
    a = torch.load(write_seg_checkpoint(tmp_path / "a.ckpt", img_hw=(32, 32), seed=0), weights_only=True)["state_dict"]
    b = torch.load(write_seg_checkpoint(tmp_path / "b.ckpt", img_hw=(32, 32), seed=0), weights_only=True)["state_dict"]
    c = torch.load(write_seg_checkpoint(tmp_path / "c.ckpt", img_hw=(32, 32), seed=1), weights_only=True)["state_dict"]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is not disturbed
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["seg_head.weight"], c["seg_head.weight"])
    d1, d2 = write_depth_fixtures(tmp_path / "d1", seed=0), write_depth_fixtures(tmp_path / "d2", seed=0)
    assert (d1["depth_hf_dir"] / "model.safetensors").read_bytes() == (d2["depth_hf_dir"] / "model.safetensors").read_bytes()
    p1, p2 = torch.load(d1["depth_pth"], weights_only=True), torch.load(d2["depth_pth"], weights_only=True)
    assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)
    s1, s2, s3 = (torch.load(write_fixture_snapshots(tmp_path / name, seed=seed)["policy_snapshot"],
                             weights_only=False)["agent"] for name, seed in (("s1", 0), ("s2", 0), ("s3", 1)))
    assert torch.equal(torch.get_rng_state(), state)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["actor.actor_model.out_mlp.0.weight"], s3["actor.actor_model.out_mlp.0.weight"])


def test_depth_files_are_the_real_formats(tmp_path):
    paths = write_depth_fixtures(tmp_path, seed=0)
    folder = paths["depth_hf_dir"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    import json

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "depth_anything" and cfg["backbone_config"]["model_type"] == "dinov2"
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "DPTImageProcessor" and pre["ensure_multiple_of"] == 14
    hf = load_file(folder / "model.safetensors")
    pth = torch.load(paths["depth_pth"], weights_only=True)
    assert paths["depth_pth"].name == "depth_anything_v2_vits_tiny.pth"
    assert {k.split(".")[0] for k in pth} == {"pretrained", "depth_head"}
    # the same numbers under the two naming schemes (qkv fused in the original)
    assert sum(v.numel() for v in hf.values()) == sum(v.numel() for v in pth.values())
    assert torch.equal(pth["depth_head.scratch.refinenet4.out_conv.weight"],
                       hf["neck.fusion_stage.layers.0.projection.weight"])


def test_write_fixtures_writes_every_file_and_the_cli_runs(tmp_path, capsys):
    from so101_deploy.tools.cli import main
    from so101_deploy.tools.fixtures import write_fixtures
    from so101_deploy.perception.seg import SegModel

    paths = write_fixtures(tmp_path / "fx", seed=0)
    assert set(paths) == {"seg_checkpoint", "depth_hf_dir", "depth_pth", "policy_snapshot", "policy_handoff"}
    assert paths["seg_checkpoint"] == tmp_path / "fx" / "seg" / "best.ckpt"
    assert all(p.exists() for p in paths.values())
    # the single real-size smoke run: the 480x640 fixture on one frame
    model = SegModel.load(paths["seg_checkpoint"], threads=2)
    mask = model.predict(np.zeros((480, 640, 3), np.uint8))
    assert mask.shape == (480, 640) and mask.dtype == np.uint8 and mask.max() <= 5

    assert main(["fixtures", "--out", str(tmp_path / "cli"), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "seg_checkpoint:" in out and "policy_handoff:" in out
    a = torch.load(tmp_path / "cli" / "seg" / "best.ckpt", weights_only=True)["state_dict"]
    b = torch.load(paths["seg_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
