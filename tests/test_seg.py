"""Seg node logic: the pick-101 EfficientViT-B0 + FPN checkpoint, torch and onnxruntime, fed recorded frames."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from so101_deploy.tools.fixtures import write_seg_checkpoint
from so101_deploy.core.messages import MessageError, decode, encode
from so101_deploy.core.node import run
from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.perception.onnx_backend import OnnxBackendError
from so101_deploy.core.recording import read_messages
from so101_deploy.perception.seg import (ModelLoadError, SegModel, SegNode, build_seg_module, read_seg_checkpoint,
                              seg_model_from_settings)
from so101_deploy.perception.seg import SETTINGS as SEG_SETTINGS

SMALL_HW = (64, 96)  # a small training size keeps the real architecture and the tests fast


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_seg_checkpoint(tmp_path_factory.mktemp("seg") / "best.ckpt", img_hw=SMALL_HW, seed=1)


@pytest.fixture(scope="module")
def small_model(small_ckpt):
    return SegModel.load(small_ckpt, threads=2)


@pytest.fixture(scope="module")
def frames(camera_recording):
    return read_messages(camera_recording)


def _timm_tree_checkpoint(path, seed=3):
    """A checkpoint assembled straight from timm's module tree and plain torch layers with the
    key names of pick-101's LightningModule (not through build_seg_module)."""
    import timm
    from torch import nn

    torch.manual_seed(seed)
    backbone = timm.create_model("efficientvit_b0", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
    lateral = nn.ModuleList([nn.Conv2d(c, 64, 1) for c in (16, 32, 64, 128)])
    output = nn.ModuleList([nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
                            for _ in range(4)])
    head = nn.Conv2d(64, 6, 1)
    for m in output.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    state = OrderedDict()
    for prefix, mod in (("backbone", backbone), ("lateral_convs", lateral), ("output_convs", output),
                        ("seg_head", head)):
        state.update({f"{prefix}.{k}": v for k, v in mod.state_dict().items()})
    torch.save({"state_dict": state, "epoch": 1, "global_step": 2, "pytorch-lightning_version": "2.5.0",
                "hyper_parameters": {"num_classes": 6, "lr": 1e-4, "weight_decay": 1e-4, "img_height": SMALL_HW[0],
                                     "img_width": SMALL_HW[1], "loss_type": "soft_iou"}}, path)
    modules = [m.eval() for m in (backbone, lateral, output, head)]
    return state, modules


def _reference_logits(modules, x):
    """The training forward as pick-101 wrote it: all four output convs, only outs[0] used."""
    backbone, lateral, output, head = modules
    with torch.no_grad():
        feats = backbone(x)
        lat = [conv(f) for conv, f in zip(lateral, feats)]
        for i in range(3, 0, -1):
            lat[i - 1] += F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(t) for conv, t in zip(output, lat)]
        up = F.interpolate(outs[0], size=x.shape[-2:], mode="bilinear", align_corners=False)
        return head(up).numpy()


def test_checkpoint_from_timm_module_tree_loads_with_no_missing_or_unexpected_keys(tmp_path):
    state, modules = _timm_tree_checkpoint(tmp_path / "best.ckpt")
    result = build_seg_module(6).load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    model = SegModel.load(tmp_path / "best.ckpt")
    assert model.num_classes == 6 and model.train_hw == SMALL_HW
    frame = np.random.default_rng(0).integers(0, 256, (*SMALL_HW, 3), dtype=np.uint8)
    x = torch.from_numpy(model.preprocess(frame))
    np.testing.assert_allclose(model.logits(frame), _reference_logits(modules, x), rtol=0, atol=1e-5)


def test_preprocess_is_training_normalisation(small_model, frames):
    frame = frames[0].data
    x = small_model.preprocess(frame)
    assert x.shape == (1, 3, *SMALL_HW) and x.dtype == np.float32
    from PIL import Image

    rgb = np.asarray(Image.fromarray(frame[:, :, ::-1].copy()).resize(SMALL_HW[::-1], Image.BILINEAR))
    want = (rgb / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), want, atol=1e-5)


def test_recorded_frames_through_the_node(small_model, frames):
    node = SegNode(small_model)
    for msg in frames:
        value, meta = node.handle(msg)
        out = decode("seg_mask", value, meta)
        assert out.data.shape == msg.data.shape[:2] and out.data.dtype == np.uint8
        assert out.frame_id == msg.frame_id and out.stamp_ns == msg.stamp_ns
        assert meta["classes"] == "real6" and meta["latency_ms"] > 0
        assert out.data.max() <= 5
        # the frame-size mask is the training-size argmax resized back with nearest neighbour
        small = small_model.logits(msg.data)[0].argmax(0).astype(np.uint8)
        h, w = msg.data.shape[:2]
        np.testing.assert_array_equal(out.data, cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))


def test_onnx_agrees_with_torch_and_checks_its_input_shape(small_ckpt, small_model, frames, tmp_path):
    cache = tmp_path / "onnx"
    onnx_model = SegModel.load(small_ckpt, backend="onnx", onnx_cache_dir=cache, threads=2)
    files = list(cache.glob("*.onnx"))
    assert len(files) == 1 and files[0].name.endswith("-1x3x64x96.onnx")
    for msg in frames:
        ref, got = small_model.logits(msg.data), onnx_model.logits(msg.data)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        same = (onnx_model.predict(msg.data) == small_model.predict(msg.data)).mean()
        assert same > 0.999  # only exact ties could flip a class
        # the mask the graph computes is the argmax of its own logits, first index on a tie as numpy's
        mask = onnx_model.session.run(onnx_model.preprocess(msg.data), "mask")[0]
        assert mask.dtype == np.uint8 and np.array_equal(mask, got[0].argmax(0).astype(np.uint8))
    with pytest.raises(OnnxBackendError, match=r"\(1, 3, 64, 96\)"):
        onnx_model.session.run(np.zeros((1, 3, 480, 640), np.float32))
    # the cache is reused (same weights, same shape), not exported again
    mtime = files[0].stat().st_mtime_ns
    SegModel.load(small_ckpt, backend="onnx", onnx_cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime and len(list(cache.glob("*.onnx"))) == 1


def test_other_weights_get_another_cache_file(tmp_path):
    cache = tmp_path / "onnx"
    for seed in (5, 6):
        SegModel.load(write_seg_checkpoint(tmp_path / f"{seed}.ckpt", img_hw=(32, 32), seed=seed),
                      backend="onnx", onnx_cache_dir=cache)
    assert len(list(cache.glob("seg_*-1x3x32x32.onnx"))) == 2


def test_truncated_onnx_cache_file_is_exported_again(small_ckpt, tmp_path):
    cache = tmp_path / "onnx"
    SegModel.load(small_ckpt, backend="onnx", onnx_cache_dir=cache)
    path = next(cache.glob("*.onnx"))
    path.write_bytes(path.read_bytes()[:1000])
    model = SegModel.load(small_ckpt, backend="onnx", onnx_cache_dir=cache)
    assert model.predict(np.zeros((*SMALL_HW, 3), np.uint8)).shape == SMALL_HW


def test_legacy_img_size_hparam(tmp_path):
    path = write_seg_checkpoint(tmp_path / "old.ckpt", img_hw=(84, 84), legacy_img_size=True)
    _, hparams = read_seg_checkpoint(path)
    assert "img_size" in hparams and "img_height" not in hparams
    model = SegModel.load(path)
    assert model.train_hw == (84, 84)
    assert model.predict(np.zeros((480, 480, 3), np.uint8)).shape == (480, 480)


# --- what must be refused -----------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        SegModel.load(tmp_path / "nope.ckpt")


def test_truncated_file(small_ckpt, tmp_path):
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(small_ckpt.read_bytes()[: small_ckpt.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        SegModel.load(bad)


def test_checkpoint_of_another_architecture(tmp_path):
    from torch import nn

    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1))
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": {"img_height": 64, "img_width": 64}},
               tmp_path / "other.ckpt")
    with pytest.raises(ModelLoadError, match=r"not the pick-101 EfficientViT-B0 \+ FPN.*missing keys"):
        SegModel.load(tmp_path / "other.ckpt")


def test_wrong_class_count_is_a_shape_error(tmp_path):
    path = write_seg_checkpoint(tmp_path / "c.ckpt", img_hw=(32, 32))
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["seg_head.weight"] = torch.zeros(7, 64, 1, 1)
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError, match="wrong shapes.*seg_head.weight"):
        SegModel.load(path)
    # a consistent 7-class model is refused too: the pipeline's masks are the 6 real classes
    ckpt["state_dict"]["seg_head.bias"] = torch.zeros(7)
    ckpt["hyper_parameters"]["num_classes"] = 7
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError, match="predicts 7 classes"):
        SegModel.load(path)


def test_not_a_lightning_checkpoint_and_unsafe_pickles(tmp_path):
    torch.save(build_seg_module().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ModelLoadError, match="not a Lightning checkpoint"):
        SegModel.load(tmp_path / "bare.pt")
    import argparse

    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(img_size=64)}, tmp_path / "ns.ckpt")
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        SegModel.load(tmp_path / "ns.ckpt")


def test_frame_of_the_wrong_shape(small_model, frames):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        small_model.predict(np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        small_model.predict(np.zeros((480, 640, 3), np.float32))
    # through the node loop: a frame whose data does not match its metadata is rejected, nothing is sent
    value, meta = encode("image", frames[0].data, frame_id=1, stamp_ns=2)
    bad_meta = dict(meta, height=240)
    with pytest.raises(MessageError, match="image.data"):
        decode("image", value, bad_meta)
    sent = []
    events = [{"type": "INPUT", "id": "image", "value": value, "metadata": bad_meta},
              {"type": "INPUT", "id": "image", "value": value, "metadata": meta}]
    stats = run("seg", {"image": "image"}, {"image": lambda m: sent.append(SegNode(small_model).handle(m))},
                node=events)
    assert stats.rejected == 1 and stats.errors == 0 and len(sent) == 1
    assert sent[0][1]["frame_id"] == 1


def test_settings_errors_name_the_setting_and_the_file(tmp_path):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SettingError, match=f"SO101_SEG_CHECKPOINT={missing}.*does not exist"):
        seg_model_from_settings(Settings("seg", SEG_SETTINGS, {"SO101_SEG_CHECKPOINT": str(missing)}))
    with pytest.raises(SettingError, match="SO101_SEG_CHECKPOINT is required"):
        seg_model_from_settings(Settings("seg", SEG_SETTINGS, {}))
    with pytest.raises(SettingError, match="SO101_SEG_BACKEND"):
        seg_model_from_settings(Settings("seg", SEG_SETTINGS, {"SO101_SEG_CHECKPOINT": "x", "SO101_SEG_BACKEND": "tensorrt"}))


@pytest.mark.integration
def test_node_exits_once_with_a_clear_error_on_a_missing_checkpoint(repo_root, tmp_path):
    env = dict(os.environ, SO101_SEG_CHECKPOINT=str(tmp_path / "gone.ckpt"))
    proc = subprocess.run([sys.executable, str(repo_root / "nodes" / "seg" / "main.py")], env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "SO101_SEG_CHECKPOINT" in errors[0] and "gone.ckpt" in errors[0]


def test_gpu_normalisation_equals_the_cpu_one(frames):
    """On CUDA a frame at the training size is normalised by torch on the GPU; same numbers (checked
    here on the CPU with the same torch code)."""
    from so101_deploy.perception.seg import imagenet_normalise, rgb_tensor

    model = SegModel(None, 6, frames[0].data.shape[:2])
    got = imagenet_normalise(rgb_tensor(frames[0].data, "cpu")).numpy()
    np.testing.assert_allclose(got, model.preprocess(frames[0].data), rtol=0, atol=1e-6)
