"""Depth node logic: Depth Anything V2 from an HF folder and from the original .pth, torch and onnxruntime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from so101_deploy.perception.depth import (DepthModel, DepthNode, ModelLoadError, depth_model_from_settings,
                                           lower_bound_hw)
from so101_deploy.perception.depth_checkpoint import (config_from_original, hf_to_original, load_depth_module,
                                                      original_to_hf, v2_small_config)
from so101_deploy.tools.fixtures import write_depth_fixtures, write_seg_checkpoint
from so101_deploy.core.messages import decode
from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.perception.onnx_backend import OnnxBackendError
from so101_deploy.core.recording import read_messages
from so101_deploy.perception.depth import SETTINGS as DEPTH_SETTINGS
from conftest import recorded_count

SIZE = 112  # small inference size for the tiny model: 480x640 -> 112x154


@pytest.fixture(scope="module")
def fixture_paths(tmp_path_factory):
    return write_depth_fixtures(tmp_path_factory.mktemp("depth"), seed=0)


@pytest.fixture(scope="module")
def hf_model(fixture_paths):
    return DepthModel.load(fixture_paths["depth_hf_dir"], input_size=SIZE, threads=2)


@pytest.fixture(scope="module")
def frames(camera_recording):
    return read_messages(camera_recording)


def test_network_input_size_is_the_original_lower_bound_resize():
    assert lower_bound_hw(480, 640, 518) == (518, 686)
    assert lower_bound_hw(480, 640, 266) == (266, 350)
    assert lower_bound_hw(480, 480, 518) == (518, 518)
    # the original repo keeps the short side >= input size even when upscaling (HF would give 392x518)
    assert lower_bound_hw(240, 320, 518) == (518, 686)
    for h, w in ((480, 640), (720, 1280), (84, 84), (1, 1000)):
        hh, ww = lower_bound_hw(h, w, 266)
        assert hh % 14 == 0 and ww % 14 == 0 and min(hh, ww) >= 266


def test_preprocessing_matches_the_hf_processor(frames):
    """Same pixel_values shape as DPTImageProcessorPil for 640x480, values within resampling tolerance.

    Both resize bicubically, but PIL's kernel uses a=-0.5 and rounds/clamps to uint8 after resizing,
    OpenCV's INTER_CUBIC uses a=-0.75 on the float image (as the original repo).  On the recorded
    frames the mean difference measured 0.0010-0.0012 and the 99.9th percentile 0.19 (normalised
    units; one intensity level is about 0.017), the largest values only at sharp edges.
    """
    from PIL import Image
    from transformers import DPTImageProcessorPil

    proc = DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_pad=False)
    model = DepthModel(None, input_size=518)
    for msg in frames[:2]:
        rgb = cv2.cvtColor(msg.data, cv2.COLOR_BGR2RGB)
        ref = proc(images=Image.fromarray(rgb), return_tensors="np")["pixel_values"]
        mine = model.preprocess(msg.data)
        assert mine.shape == ref.shape == (1, 3, 518, 686) and mine.dtype == np.float32
        diff = np.abs(mine - ref)
        assert diff.mean() < 0.003
        assert np.percentile(diff, 99.9) < 0.3


def test_original_pth_round_trip_is_exact(fixture_paths, frames):
    hf = load_depth_module(fixture_paths["depth_hf_dir"])
    orig = load_depth_module(fixture_paths["depth_pth"])
    state = torch.load(fixture_paths["depth_pth"], weights_only=True)
    assert state and all(k.startswith(("pretrained.", "depth_head.")) for k in state)
    converted = original_to_hf(state, 4, hf.state_dict().keys())
    result = hf.load_state_dict(converted, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in hf.state_dict().items():
        assert torch.equal(orig.state_dict()[k], v), k
    a = DepthModel(hf, input_size=SIZE).predict(frames[0].data)
    b = DepthModel(orig, input_size=SIZE).predict(frames[0].data)
    np.testing.assert_array_equal(a, b)


def test_real_v2_small_layout_is_read_back_from_original_keys():
    from transformers import DepthAnythingForDepthEstimation

    model = DepthAnythingForDepthEstimation(v2_small_config())
    assert sum(p.numel() for p in model.parameters()) == 24_785_089
    original = hf_to_original(model.state_dict(), 12)
    assert "pretrained.blocks.11.attn.qkv.weight" in original and "depth_head.scratch.refinenet4.out_conv.weight" in original
    cfg = config_from_original(original, "test")
    b = cfg.backbone_config
    assert (b.hidden_size, b.num_hidden_layers, b.num_attention_heads, b.mlp_ratio) == (384, 12, 6, 4)
    assert list(b.out_indices) == [3, 6, 9, 12] and b.image_size == 518
    assert list(cfg.neck_hidden_sizes) == [48, 96, 192, 384]
    assert (cfg.fusion_hidden_size, cfg.head_hidden_size) == (64, 32)


def test_recorded_frames_through_the_node(hf_model, frames):
    node = DepthNode(hf_model)
    for msg in frames:
        value, meta = node.handle(msg)
        out = decode("disparity", value, meta)
        assert out.data.shape == msg.data.shape[:2] and out.data.dtype == np.float32
        assert out.frame_id == msg.frame_id and out.stamp_ns == msg.stamp_ns and meta["latency_ms"] > 0
        assert np.isfinite(out.data).all() and out.data.min() >= 0 and out.data.std() > 0
        raw = hf_model.raw(msg.data)[0].numpy()
        assert raw.shape == (112, 154)
        # align_corners=True: the output's corner pixels are the network's corner pixels
        for (i, j), (ri, rj) in (((0, 0), (0, 0)), ((-1, -1), (-1, -1)), ((0, -1), (0, -1))):
            assert out.data[i, j] == pytest.approx(raw[ri, rj], rel=1e-5)


def test_onnx_agrees_with_torch_one_export_per_input_shape(fixture_paths, hf_model, frames, tmp_path):
    cache = tmp_path / "onnx"
    onnx_model = DepthModel.load(fixture_paths["depth_pth"], backend="onnx", input_size=SIZE, onnx_cache_dir=cache,
                                 threads=2)
    for msg in frames[:2]:
        ref, got = hf_model.predict(msg.data), onnx_model.predict(msg.data)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert [p.name.split("-")[-1] for p in cache.glob("*.onnx")] == ["1x3x112x154.onnx"]
    square = frames[0].data[:, 80:560]
    np.testing.assert_allclose(onnx_model.predict(square), hf_model.predict(square), rtol=0,
                               atol=1e-4 * np.abs(hf_model.predict(square)).max())
    assert sorted(p.name.split("-")[-1] for p in cache.glob("*.onnx")) == ["1x3x112x112.onnx", "1x3x112x154.onnx"]
    session = onnx_model.session((1, 3, 112, 154))
    with pytest.raises(OnnxBackendError, match=r"exported for float32 input of shape \(1, 3, 112, 154\)"):
        session.run(np.zeros((1, 3, 112, 112), np.float32))


def test_onnx_export_fuses_each_attention_into_one_node(fixture_paths, hf_model, frames, tmp_path):
    import onnx

    onnx_model = DepthModel.load(fixture_paths["depth_hf_dir"], backend="onnx", input_size=SIZE,
                                 onnx_cache_dir=tmp_path, threads=2)
    ref, got = hf_model.predict(frames[0].data), onnx_model.predict(frames[0].data)
    graph = onnx.load(str(onnx_model.session((1, 3, 112, 154)).path)).graph
    ops = [n.op_type for n in graph.node]
    layers = onnx_model.module.config.backbone_config.num_hidden_layers
    # one contrib MultiHeadAttention per DINOv2 block, and no Softmax left over from a plain attention
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    # the torch model itself is left with its own attention implementation
    assert onnx_model.module.config.backbone_config._attn_implementation != "so101_ort_mha"
    np.testing.assert_array_equal(DepthModel(onnx_model.module, input_size=SIZE).predict(frames[0].data), ref)


# --- what must be refused -----------------------------------------------------------------------------------

def test_missing_and_truncated_files(fixture_paths, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        DepthModel.load(tmp_path / "nope.pth")
    pth = fixture_paths["depth_pth"]
    (tmp_path / "cut.pth").write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        DepthModel.load(tmp_path / "cut.pth")
    folder = tmp_path / "hf"
    shutil.copytree(fixture_paths["depth_hf_dir"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50_000])
    with pytest.raises(ModelLoadError, match="cannot load model.safetensors"):
        DepthModel.load(folder)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        DepthModel.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        DepthModel.load(folder)


def test_another_architecture_is_refused(fixture_paths, tmp_path):
    seg = write_seg_checkpoint(tmp_path / "seg.ckpt", img_hw=(32, 32))
    with pytest.raises(ModelLoadError, match="not an original Depth Anything V2 checkpoint"):
        DepthModel.load(seg)
    folder = tmp_path / "hf"
    shutil.copytree(fixture_paths["depth_hf_dir"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="dpt")))
    with pytest.raises(ModelLoadError, match="model_type is 'dpt'"):
        DepthModel.load(folder)
    # a config whose shapes do not match the weights: refused, never half-loaded with random weights
    cfg["neck_hidden_sizes"] = [8, 16, 32, 32]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="does not match its config.json"):
        DepthModel.load(folder)
    state = torch.load(fixture_paths["depth_pth"], weights_only=True)
    del state["depth_head.scratch.output_conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match="1 missing keys.*head.conv1.weight"):
        DepthModel.load(tmp_path / "partial.pth")


def test_frame_of_the_wrong_shape(hf_model):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        hf_model.predict(np.zeros((480, 640, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        hf_model.predict(np.zeros((480, 640, 3), np.float64))


def test_settings_errors_name_the_setting(fixture_paths, tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(SettingError, match=f"SO101_DEPTH_MODEL={missing}.*does not exist"):
        depth_model_from_settings(Settings("depth", DEPTH_SETTINGS, {"SO101_DEPTH_MODEL": str(missing)}))
    ok = str(fixture_paths["depth_hf_dir"])
    with pytest.raises(SettingError, match="SO101_DEPTH_FP16"):
        depth_model_from_settings(Settings("depth", DEPTH_SETTINGS, {"SO101_DEPTH_MODEL": ok, "SO101_DEPTH_FP16": "true"}))
    with pytest.raises(SettingError, match="multiple of 14"):
        depth_model_from_settings(Settings("depth", DEPTH_SETTINGS, {"SO101_DEPTH_MODEL": ok, "SO101_DEPTH_INPUT_SIZE": "300"}))
    model = depth_model_from_settings(Settings("depth", DEPTH_SETTINGS, {"SO101_DEPTH_MODEL": ok, "SO101_DEPTH_INPUT_SIZE": "266"}))
    assert model.input_size == 266 and model.backend == "torch"


@pytest.mark.integration
def test_node_exits_once_with_a_clear_error_on_a_corrupt_model(repo_root, tmp_path):
    bad = tmp_path / "depth_anything_v2_vits.pth"
    bad.write_bytes(b"not a checkpoint")
    env = dict(os.environ, SO101_DEPTH_MODEL=str(bad))
    proc = subprocess.run([sys.executable, str(repo_root / "nodes" / "depth" / "main.py")], env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "SO101_DEPTH_MODEL" in errors[0] and str(bad) in errors[0]


def test_gpu_preprocessing_equals_the_cpu_one(frames):
    """On CUDA the resize+normalise run in torch (bicubic a=-0.75, as cv2 INTER_CUBIC); same numbers,
    checked here on the CPU with the same torch code."""
    model = DepthModel(None, input_size=266)
    for frame in (frames[0].data, frames[1].data[:, 80:560]):
        ref = model.preprocess(frame)
        got = model.preprocess_torch(frame, device="cpu").numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-3  # 5e-5 before normalisation, / std 0.225


@pytest.mark.integration
def test_seg_and_depth_nodes_in_a_dora_dataflow(repo_root, venv_bin, generated_video, fixture_paths, tmp_path):
    """camera (generated video) -> seg (onnx) + depth (original .pth, torch) -> recorder, under `dora run`;
    every recorded mask/disparity is what the library computes for the recorded frame of its frame_id."""
    import yaml

    from so101_deploy.core.dataflow import run_dataflow
    from so101_deploy.core.recording import read_recording
    from so101_deploy.perception.seg import SegModel

    seg_ckpt = write_seg_checkpoint(tmp_path / "seg" / "best.ckpt", img_hw=(64, 96), seed=2)
    rec = tmp_path / "rec"
    nodes = repo_root / "nodes"
    flow = {"nodes": [
        {"id": "camera", "path": str(nodes / "camera" / "main.py"), "outputs": ["image"],
         "env": {"SO101_CAMERA": str(generated_video), "SO101_CAMERA_FPS": "5", "SO101_CAMERA_LOOP": "true"},
         "inputs": {"tick": "dora/timer/millis/20"}},
        {"id": "seg", "path": str(nodes / "seg" / "main.py"), "restart_policy": "never", "outputs": ["mask"],
         "env": {"SO101_SEG_CHECKPOINT": str(seg_ckpt), "SO101_SEG_BACKEND": "onnx",
                 "SO101_ONNX_CACHE": str(tmp_path / "onnx"), "SO101_THREADS": "1"},
         "inputs": {"image": {"source": "camera/image", "queue_size": 1}}},
        {"id": "depth", "path": str(nodes / "depth" / "main.py"), "restart_policy": "never", "outputs": ["disparity"],
         "env": {"SO101_DEPTH_MODEL": str(fixture_paths["depth_pth"]), "SO101_DEPTH_INPUT_SIZE": str(SIZE),
                 "SO101_THREADS": "1"},
         "inputs": {"image": {"source": "camera/image", "queue_size": 1}}},
        {"id": "recorder", "path": str(nodes / "recorder" / "main.py"), "restart_policy": "never",
         "env": {"SO101_RECORD_DIR": str(rec), "SO101_RECORD_TYPES": "image=image,mask=seg_mask,disparity=disparity"},
         "inputs": {k: {"source": s, "queue_size": 100} for k, s in
                    (("image", "camera/image"), ("mask", "seg/mask"), ("disparity", "depth/disparity"))}},
    ]}
    path = tmp_path / "perception.yml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    env = {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    # until 3 masks and 3 disparities are recorded: a deadline, not a window (model loading is slow)
    result = run_dataflow(path, 180, extra_env=env, grace_s=60, until=lambda log: min(
        recorded_count(rec / "mask.arrow"), recorded_count(rec / "disparity.arrow")) >= 3)
    assert result.returncode == 0 and result.condition_met, result.log[-3000:]
    assert "Traceback" not in result.log, result.log[-3000:]
    got = read_recording(rec)
    images = {m.frame_id: m for m in got["image"]}
    assert got.get("mask") and got.get("disparity"), result.log[-3000:]
    seg_ref = SegModel.load(seg_ckpt)
    depth_ref = DepthModel.load(fixture_paths["depth_pth"], input_size=SIZE)
    for m in got["mask"][:3]:
        frame = images[m.frame_id]
        assert m.stamp_ns == frame.stamp_ns and m.meta["classes"] == "real6" and m.meta["latency_ms"] > 0
        assert (m.data == seg_ref.predict(frame.data)).mean() > 0.999
    for d in got["disparity"][:3]:
        frame = images[d.frame_id]
        assert d.stamp_ns == frame.stamp_ns and d.data.shape == (480, 640) and d.meta["latency_ms"] > 0
        ref = depth_ref.predict(frame.data)
        assert np.abs(d.data - ref).max() <= 1e-4 * np.abs(ref).max()


def test_position_embeddings_are_resized_as_the_original_dinov2_code():
    """Golden values from the original Depth-Anything-V2/DINOv2 ``interpolate_pos_encoding`` (run once
    on the seed-0 tiny fixture's embeddings, 266x350 input, 19x25 grid); transformers' own resize
    differs, which on the real-size model moved the output by 1-2 %."""
    from so101_deploy.tools.fixtures import tiny_depth_module

    model = tiny_depth_module(0)
    tokens = torch.zeros(1, 1 + 19 * 25, 64)
    with torch.no_grad():
        native = model.backbone.embeddings.interpolate_pos_encoding(tokens, 266, 350)
        from so101_deploy.perception.depth_checkpoint import use_original_pos_interpolation

        use_original_pos_interpolation(model)
        got = model.backbone.embeddings.interpolate_pos_encoding(tokens, 266, 350)
    assert got.shape == (1, 476, 64)
    assert float(got[0, 1:].sum()) == pytest.approx(-2.758942127227783, abs=1e-4)
    assert float(got[0, 1:].abs().sum()) == pytest.approx(403.4493103027344, rel=1e-5)
    np.testing.assert_allclose(got[0, 5, :3].numpy(), [0.003237024648115039, 0.007244443520903587,
                                                       -0.0054067037999629974], atol=1e-6)
    np.testing.assert_allclose(got[0, -1, :3].numpy(), [0.028581853955984116, -0.014090366661548615,
                                                        -0.013113295659422874], atol=1e-6)
    assert (got - native).abs().max() > 1e-3
    # at the model's own 518x518 the table is used as it is
    assert model.backbone.embeddings.interpolate_pos_encoding(torch.zeros(1, 1370, 64), 518, 518) is \
        model.backbone.embeddings.position_embeddings
