"""perception: camera capture, the frame gate, segmentation (EfficientViT-B0 + FPN), depth (Depth Anything
V2 Small) and their onnxruntime backend.  Imports only :mod:`so101_deploy.core`."""
