"""Writing EDSR models as ONNX and running them through cv2.dnn, the way the daemon will."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from srd.train.model import DIV2K_MEAN_BGR

# PixelShuffle exports as DepthToSpace mode "CRD", which needs opset >= 11; 13 is what was verified to load in
# both cv2.dnn 5.0 engines.
OPSET = 13


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with dynamic height/width, input "input" and output "output" (the engine's contract).

    Uses the legacy TorchScript exporter: it gives a plain Conv/Relu/Add/DepthToSpace graph that both
    cv2.dnn 5.0 engines load (the dynamo exporter's opset-20 graph loads too; this one needs no onnxscript).
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
    graph_model = onnx.load(str(path))
    _inline_shared_initializers(graph_model.graph)
    _rewrite_depth_to_space_as_dcr(graph_model.graph, path)
    onnx.save(graph_model, str(path))


def _inline_shared_initializers(graph: onnx.GraphProto) -> None:
    """Give each weight that torch's exporter shared between layers (equal tensors, e.g. the PReLU slopes of an
    untrained network) through an Identity node a copy of its own: cv2.dnn's new engine refuses such a graph."""
    weights = {init.name: init for init in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in weights]:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weights[node.input[0]]),
                                                         node.output[0]))
        graph.node.remove(node)


def _rewrite_depth_to_space_as_dcr(graph: onnx.GraphProto, path: Path) -> None:
    """Turn each Conv → DepthToSpace(CRD) into an equivalent Conv with permuted outputs → DepthToSpace(DCR).

    Loading any OpenCV-zoo `.pb` registers dnn_superres's own DepthToSpace layer process-wide, and that
    layer always orders channels the DCR (TensorFlow) way, ignoring the ONNX `mode`. A DCR graph gives
    the same result with either layer, so srd's models stay correct in a worker that also ran a zoo model.
    """
    weights = {init.name: init for init in graph.initializer}
    for node, conv, block in _depth_to_space_convs(graph, b"CRD"):
        if conv.input[1] not in weights:
            raise ValueError(f"{path}: DepthToSpace {node.name} is not fed by a Conv with constant weights")
        for name in conv.input[1:]:
            tensor = numpy_helper.to_array(weights[name])
            order = _crd_to_dcr_order(tensor.shape[0], block)
            weights[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(tensor[order]), name))
        next(a for a in node.attribute if a.name == "mode").s = b"DCR"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The torch weights of a file :func:`export_onnx` wrote (float32 or float16): export undone.

    Why: a shipped model can then start a new run on a machine that lacks the checkpoint it came from.
    """
    graph = onnx.load(str(path)).graph
    # store_weights_fp16 renamed each weight <name>_fp16 and cast it back to <name>.
    weights = {init.name.removesuffix("_fp16"): numpy_helper.to_array(init).astype(np.float32)
               for init in graph.initializer}
    for _, conv, block in _depth_to_space_convs(graph, b"DCR"):
        for name in conv.input[1:]:
            weights[name] = weights[name][np.argsort(_crd_to_dcr_order(weights[name].shape[0], block))]
    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in weights.items()}


def _depth_to_space_convs(graph: onnx.GraphProto, mode: bytes) -> Iterator[tuple[onnx.NodeProto, onnx.NodeProto, int]]:
    """Each DepthToSpace node of ``mode`` (ONNX's default is DCR), the Conv that feeds it, and its block size."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        attributes = {a.name: a for a in node.attribute}
        if node.op_type != "DepthToSpace" or (attributes["mode"].s if "mode" in attributes else b"DCR") != mode:
            continue
        conv = producers.get(node.input[0])
        if conv is None or conv.op_type != "Conv":
            raise ValueError(f"DepthToSpace {node.name} is not fed by a Conv")
        yield node, conv, attributes["blocksize"].i


def _crd_to_dcr_order(outputs: int, block: int) -> np.ndarray:
    """The output-channel order that turns a conv feeding DepthToSpace(CRD) into one feeding DCR:
    CRD index c·s² + k  →  DCR index k·C + c, for k = row·s + column inside the block."""
    return np.arange(outputs).reshape(outputs // (block * block), block * block).T.reshape(-1)


def store_weights_fp16(src: Path, dst: Path) -> None:
    """Write ``src`` to ``dst`` with every float32 convolution weight and bias stored as float16, each feeding a
    Cast to float32.

    Half the file size; cv2.dnn folds the casts when it loads the model, so the net it runs has the same layers
    and speed, with the weights rounded to float16. Only a Conv's: cv2.dnn's new engine refuses a Cast before
    other layers' constants (PRelu slopes), which are a few numbers per layer anyway.
    """
    graph_model = onnx.load(str(src))
    graph = graph_model.graph
    convolved = {name for node in graph.node if node.op_type == "Conv" for name in node.input[1:]}
    kept, casts = [], []
    for init in graph.initializer:
        tensor = numpy_helper.to_array(init)
        if tensor.dtype != np.float32 or init.name not in convolved:
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(tensor.astype(np.float16), f"{init.name}_fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{init.name}_fp16"], [init.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(dst))


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
