"""`so101-deploy quantize-depth`: static int8 depth, written to the cache only when its 84x84 disparity
observation agrees with fp32's on held-out frames; the depth node runs it with SO101_DEPTH_INT8=true and
says how to make it when it is missing."""

import json

import numpy as np
import pytest

from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.perception.depth import SETTINGS, DepthNode, depth_model_from_settings
from so101_deploy.tools.cli import main as cli


@pytest.fixture(scope="module")
def scene_frames(tmp_path_factory):
    from so101_deploy.sim.synthetic import write_image_folder

    folder = tmp_path_factory.mktemp("scene")
    write_image_folder(folder, frames=6, seed=2)
    return folder


def _env(fixture_weights, cache, int8):
    return {"SO101_DEPTH_MODEL": str(fixture_weights["depth_hf_dir"]), "SO101_DEPTH_BACKEND": "onnx",
            "SO101_DEPTH_INPUT_SIZE": "266", "SO101_ONNX_CACHE": str(cache), "SO101_DEPTH_INT8": str(int8).lower()}


def test_int8_depth_is_made_checked_and_run_by_the_node(tmp_path, fixture_weights, scene_frames, capsys):
    cache = tmp_path / "onnx"
    with pytest.raises(SettingError, match="quantize-depth --model .* --input-size 266"):
        depth_model_from_settings(Settings("depth", SETTINGS, _env(fixture_weights, cache, True)))
    rc = cli(["quantize-depth", "--model", str(fixture_weights["depth_hf_dir"]), "--frames", str(scene_frames),
              "--input-size", "266", "--onnx-cache", str(cache)])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(out[: out.rindex("}") + 1])
    assert report["accepted"] and report["correlation_min"] >= 0.99 and report["check_frames"] == 2
    assert report["calibration_frames"] == 4 and report["input_shape"] == [1, 3, 266, 350]
    model = depth_model_from_settings(Settings("depth", SETTINGS, _env(fixture_weights, cache, True)))
    assert model.int8 and model.module is None
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    from so101_deploy.core.messages import decode, encode

    value, meta = DepthNode(model).handle(decode("image", *encode("image", frame, frame_id=1, stamp_ns=1)))
    disparity = decode("disparity", value, meta).data
    assert disparity.shape == (480, 640) and np.isfinite(disparity).all()


def test_a_disagreeing_int8_export_is_rejected_and_not_written(tmp_path, fixture_weights, scene_frames, capsys):
    cache = tmp_path / "onnx"
    rc = cli(["quantize-depth", "--model", str(fixture_weights["depth_hf_dir"]), "--frames", str(scene_frames),
              "--onnx-cache", str(cache), "--min-correlation", "1.01"])
    out = capsys.readouterr().out
    assert rc == 1 and "int8 depth rejected" in out and "fp32 stays in use" in out
    assert not list(cache.glob("depth_anything_int8*"))


def test_too_few_frames_is_one_line(tmp_path, fixture_weights, capsys):
    (tmp_path / "few").mkdir()
    rc = cli(["quantize-depth", "--model", str(fixture_weights["depth_hf_dir"]), "--frames", str(tmp_path / "few")])
    assert rc == 2 and "at least 4 camera images" in capsys.readouterr().out


def test_int8_needs_the_onnx_backend_on_the_cpu(tmp_path, fixture_weights):
    env = {**_env(fixture_weights, tmp_path, True), "SO101_DEPTH_BACKEND": "torch"}
    with pytest.raises(SettingError, match="int8 depth runs only with the onnx backend"):
        depth_model_from_settings(Settings("depth", SETTINGS, env))
