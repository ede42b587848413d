"""Writing EDSR models as ONNX and running them through cv2.dnn, the way the daemon will."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from srd.train.model import DIV2K_MEAN_BGR, EDSR

# Opset 13 is the oldest with the DepthToSpace "CRD" mode PixelShuffle needs (opset 11 also has it);
# cv2.dnn 5.0 loads it with both engines.
OPSET = 13


def export_onnx(model: EDSR, path: Path) -> None:
    """Export with dynamic height/width, input "input" and output "output" (the engine's contract).

    Uses the legacy TorchScript exporter: it gives a plain Conv/Relu/Add/DepthToSpace graph without
    needing onnxscript at load time, and cv2.dnn 5.0 loads it with both engines.
    """
    model = model.eval().float()
    dummy = torch.zeros(1, 3, 24, 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "out_height", 3: "out_width"}},
            opset_version=OPSET,
            dynamo=False,
        )


def load_net(path: Path, classic: bool = True) -> cv2.dnn.Net:
    """Load an ONNX model with the chosen cv2.dnn engine (classic measured faster for these graphs)."""
    engine = cv2.dnn.ENGINE_CLASSIC if classic else cv2.dnn.ENGINE_NEW
    return cv2.dnn.readNetFromONNX(str(path), engine)


def run_net(net: cv2.dnn.Net, lr_bgr: np.ndarray) -> np.ndarray:
    """Upscale one whole BGR uint8 image with the "edsr" convention; returns float BGR 0–255, unclipped."""
    mean = np.asarray(DIV2K_MEAN_BGR, dtype=np.float32)
    blob = (lr_bgr.astype(np.float32) - mean).transpose(2, 0, 1)[None]
    net.setInput(np.ascontiguousarray(blob))
    out = net.forward()
    return out[0].transpose(1, 2, 0) + mean
