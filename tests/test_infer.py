"""``so101-deploy infer`` on the fixture checkpoints and generated frames: the files it writes agree
with a plain re-computation of the observation and the policy's action, and bad inputs are refused."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from so101_deploy.tools.cli import main as cli_main
from so101_deploy.tools.fixtures import write_fixtures
from so101_deploy.policy.drqv2 import PolicyRunner
from so101_deploy.sim.synthetic import write_image_folder

DEPTH_SIZE = "126"  # a small Depth Anything input keeps the test fast; the chain is the same


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    paths = write_fixtures(root / "fixtures", seed=0)
    frames = write_image_folder(root / "frames", frames=3, seed=1)
    q = np.array([[0.0, -0.5, 0.6, 1.2, 1.57, 0.3],
                  [0.01, -0.49, 0.58, 1.21, 1.57, 0.35],
                  [0.03, -0.47, 0.55, 1.22, 1.56, 0.40]])
    stamps = [1_000_000_000, 1_033_000_000, 1_066_000_000]
    joints = root / "joints.json"
    joints.write_text(json.dumps([{"positions_rad": row.tolist(), "stamp_ns": s} for row, s in zip(q, stamps)]))
    return {"root": root, "paths": paths, "frames": [str(f) for f in frames], "joints": joints, "q": q,
            "stamps": stamps}


def ref_frame(mask, disp):
    """The sim wrapper's rules, written plainly (see test_observation.py)."""
    d = disp.astype(np.float32)
    lo, hi = d.min(), d.max()
    unit = np.ones_like(d) if hi - lo <= 1e-6 else (d - lo) / (hi - lo)
    du8 = np.ascontiguousarray((unit * 255).astype(np.uint8)[:, 80:560])
    seg = np.ascontiguousarray(np.clip(mask.astype(np.int64) - 1, 0, 4).astype(np.uint8)[:, 80:560])
    return np.stack([cv2.resize(seg, (84, 84), interpolation=cv2.INTER_NEAREST),
                     cv2.resize(du8, (84, 84), interpolation=cv2.INTER_AREA)])


def infer(fx, out, *extra):
    p = fx["paths"]
    return cli_main(["infer", "--seg", str(p["seg_checkpoint"]), "--depth", str(p["depth_hf_dir"]),
                     "--depth-input-size", DEPTH_SIZE, "--out", str(out), *extra])


def test_infer_on_fixtures_with_joints(fx, capsys):
    out = fx["root"] / "out_snapshot"
    rc = infer(fx, out, "--policy", str(fx["paths"]["policy_snapshot"]), "--frames", *fx["frames"],
               "--joints", str(fx["joints"]))
    printed = capsys.readouterr().out
    assert rc == 0
    masks = np.load(out / "seg_masks.npy")
    disp = np.load(out / "disparity.npy")
    obs = np.load(out / "observation.npz")
    action = np.load(out / "action.npy")
    assert masks.shape == (3, 480, 640) and masks.dtype == np.uint8 and masks.max() <= 5
    assert disp.shape == (3, 480, 640) and disp.dtype == np.float32 and np.isfinite(disp).all()
    assert disp.max() - disp.min() > 0  # raw, not normalised to anything fixed
    assert obs["rgb"].shape == (3, 2, 84, 84) and obs["rgb"].dtype == np.uint8
    assert obs["low_dim_state"].shape == (3, 18) and obs["low_dim_state"].dtype == np.float32
    # the observation is the training observation of the three frames, oldest first
    np.testing.assert_array_equal(obs["rgb"], np.stack([ref_frame(m, d) for m, d in zip(masks, disp)]))
    low = obs["low_dim_state"]
    np.testing.assert_allclose(low[:, :6], fx["q"], atol=1e-6)
    dt = np.diff(fx["stamps"]) * 1e-9
    np.testing.assert_allclose(low[0, 6:12], 0.0, atol=0)
    np.testing.assert_allclose(low[1:, 6:12], np.diff(fx["q"], axis=0) / dt[:, None], rtol=1e-5)
    assert low[2, 14] > 0  # gripperframe above the floor
    # the action is the policy's on that observation
    runner = PolicyRunner.load(fx["paths"]["policy_snapshot"])
    want, space = runner.act(obs["rgb"].astype(np.float32), low)
    assert space == "cartesian" and action.dtype == np.float32
    np.testing.assert_array_equal(action, want)
    assert "cartesian" in printed and f"{want[0]:.4f}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"]["format"] == "snapshot" and summary["observation_options"]["training_default"]


def test_infer_one_frame_handoff_at_rest(fx):
    out = fx["root"] / "out_handoff"
    rc = infer(fx, out, "--policy", str(fx["paths"]["policy_handoff"]), "--frames", fx["frames"][-1])
    assert rc == 0
    obs = np.load(out / "observation.npz")
    masks, disp = np.load(out / "seg_masks.npy"), np.load(out / "disparity.npy")
    assert masks.shape == (1, 480, 640)
    # one frame fills the stack, as at an episode start; the arm at rest at zero
    np.testing.assert_array_equal(obs["rgb"], np.stack([ref_frame(masks[0], disp[0])] * 3))
    np.testing.assert_array_equal(obs["low_dim_state"][:, :12], np.zeros((3, 12), np.float32))
    assert (obs["low_dim_state"][0] == obs["low_dim_state"][2]).all()
    runner = PolicyRunner.load(fx["paths"]["policy_handoff"])
    np.testing.assert_array_equal(np.load(out / "action.npy"),
                                  runner.act(obs["rgb"].astype(np.float32), obs["low_dim_state"])[0])


def test_bad_inputs_are_refused_before_anything_runs(fx, tmp_path, capsys):
    snap = str(fx["paths"]["policy_snapshot"])
    frames = fx["frames"]

    def run(*args):
        rc = infer(fx, tmp_path / "out", "--policy", snap, *args)
        return rc, capsys.readouterr().err

    rc, err = run("--frames", str(tmp_path / "missing.png"))
    assert rc == 2 and "missing.png: file not found" in err
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((240, 320, 3), np.uint8))
    rc, err = run("--frames", str(small))
    assert rc == 2 and "320x240, expected 640x480" in err
    bad = tmp_path / "joints.json"
    bad.write_text(json.dumps([{"positions_rad": [0] * 6, "stamp_ns": 1}]))
    rc, err = run("--frames", *frames, "--joints", str(bad))
    assert rc == 2 and "1 entries for 3 frames" in err
    bad.write_text(json.dumps({"frames": [{"positions_rad": [0] * 5, "stamp_ns": i} for i in range(3)]}))
    rc, err = run("--frames", *frames, "--joints", str(bad))
    assert rc == 2 and "entry 0: positions_rad must be 6" in err
    bad.write_text(json.dumps([{"positions_rad": [0] * 6, "stamp_ns": s} for s in (3, 2, 1)]))
    rc, err = run("--frames", *frames, "--joints", str(bad))
    assert rc == 2 and "stamps must increase" in err
    bad.write_text("{not json")
    rc, err = run("--frames", *frames, "--joints", str(bad))
    assert rc == 2 and "not valid JSON" in err
    assert not (tmp_path / "out").exists()


def test_malicious_policy_is_refused(fx, tmp_path, capsys):
    import os

    import torch

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    evil = tmp_path / "evil.pt"
    torch.save({"agent": {}, "cfg": Payload()}, evil)
    p = fx["paths"]
    rc = cli_main(["infer", "--seg", str(p["seg_checkpoint"]), "--depth", str(p["depth_hf_dir"]),
                   "--policy", str(evil), "--frames", fx["frames"][0], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_infer_remaps_frames_with_a_camera_calibration(fx, tmp_path, capsys):
    from so101_deploy.perception.camera_calibration import CameraCalibration, PinholeCamera, Rectifier
    from so101_deploy.sim.camera_proof import REAL_CAMERA

    lens = REAL_CAMERA  # a wider, distorted camera than the sim's wrist_cam
    cal = CameraCalibration(640, 480, lens.matrix, lens.dist, 0.2).save(tmp_path / "cal.json")
    out = tmp_path / "out"
    rc = infer(fx, out, "--policy", str(fx["paths"]["policy_snapshot"]), "--frames", *fx["frames"],
               "--camera-calibration", str(cal))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "covers 100.0% of the sim's view" in err and "is not set" not in err
    rect = Rectifier(CameraCalibration.load(cal), PinholeCamera.from_fovy(70.5, 640, 480))
    remapped = sorted((out / "remapped").glob("*.png"))
    assert len(remapped) == 3
    for path, frame in zip(remapped, fx["frames"]):
        np.testing.assert_array_equal(cv2.imread(str(path)), rect.apply(cv2.imread(frame)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["camera_calibration"]["coverage"] == 1.0
    # without one: the frames as they are, with the warning (said before anything is read)
    rc = infer(fx, tmp_path / "plain", "--policy", str(fx["paths"]["policy_snapshot"]), "--frames",
               str(tmp_path / "missing.png"), "--camera-calibration", "")
    err = capsys.readouterr().err
    assert rc == 2 and "warning: SO101_CAMERA_CALIBRATION is not set: frames pass through unchanged" in err
    # frames of another size than the calibration's are refused
    rc = infer(fx, tmp_path / "hd", "--policy", str(fx["paths"]["policy_snapshot"]), "--frames", fx["frames"][0],
               "--camera-calibration",
               str(CameraCalibration(1280, 720, lens.matrix, lens.dist, 0.2).save(tmp_path / "hd.json")))
    assert rc == 2 and "640x480, expected 1280x720 (the size the --camera-calibration is for)" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    rc = infer(fx, tmp_path / "bad", "--policy", str(fx["paths"]["policy_snapshot"]), "--frames", fx["frames"][0],
               "--camera-calibration", str(bad))
    assert rc == 2 and "--camera-calibration: camera calibration" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
