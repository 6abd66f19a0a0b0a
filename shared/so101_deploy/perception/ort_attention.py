"""Export a transformers ViT's attention as ONE onnxruntime ``MultiHeadAttention`` node per layer.

The plain export of Depth Anything's DINOv2 backbone writes attention as MatMul -> Mul -> Softmax ->
MatMul with transposes around them, and onnxruntime's own transformer optimizer does not recognise
that pattern for DINOv2 (``optimize_model(model_type="vit")`` fused no attention here).  The contrib
op ``com.microsoft.MultiHeadAttention`` runs the same maths with a fused, tiled kernel on the CPU (and
on ORT's CUDA provider): at depth 518 (1 814 tokens) it is ~10 % of depth's whole latency on 2 cores,
and it agrees with the plain graph to float rounding (tested).

How: while exporting, the model's attention implementation is switched (transformers'
``AttentionInterface``) to a torch custom op whose eager forward is ``scaled_dot_product_attention``
and whose ONNX symbolic is the contrib op; afterwards the model's own implementation is restored.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

IMPLEMENTATION = "so101_ort_mha"
CONTRIB_OPSET = {"com.microsoft": 1}
_registered = False


def _register() -> None:
    """The custom op, its ONNX symbolic and the attention implementation: once per process."""
    global _registered
    if _registered:
        return
    import torch
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import _get_const
    from transformers import AttentionInterface

    # the schema is spelt out: this module's annotations are strings (``from __future__ import annotations``)
    @torch.library.custom_op("so101::mha", mutates_args=(),
                             schema="(Tensor q, Tensor k, Tensor v, int num_heads, float scale) -> Tensor")
    def mha(q, k, v, num_heads, scale):
        """(B, S, E) query, key, value -> (B, S, E): softmax(q k^T * scale) v per head, heads concatenated."""
        b, s, e = q.shape

        def heads(t):
            return t.view(b, s, num_heads, e // num_heads).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)
        return out.transpose(1, 2).reshape(b, s, e).contiguous()

    @mha.register_fake
    def _(q, k, v, num_heads, scale):
        return torch.empty_like(q)

    def symbolic(g, q, k, v, num_heads, scale):
        return g.op("com.microsoft::MultiHeadAttention", q, k, v,
                    num_heads_i=_get_const(num_heads, "i", "num_heads"),
                    scale_f=_get_const(scale, "f", "scale")).setType(q.type())

    register_custom_op_symbolic("so101::mha", symbolic, 1)

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # transformers hands (B, heads, S, D) and wants (B, S, heads, D) back, like its eager attention
        if attention_mask is not None:
            raise ValueError("the fused ONNX attention has no mask input; DINOv2 uses none")
        b, h, s, d = query.shape

        def merge(t):
            return t.transpose(1, 2).reshape(b, s, h * d)

        out = torch.ops.so101.mha(merge(query), merge(key), merge(value), h,
                                  float(scaling if scaling is not None else d ** -0.5))
        return out.view(b, s, h, d), None

    AttentionInterface.register(IMPLEMENTATION, attention)
    _registered = True


@contextlib.contextmanager
def fused_attention(module) -> Iterator[None]:
    """Within the block, every transformers config inside ``module`` uses the fused attention."""
    _register()
    configs = {id(c): c for m in module.modules()
               if (c := getattr(m, "config", None)) is not None and hasattr(c, "_attn_implementation")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = IMPLEMENTATION
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]
