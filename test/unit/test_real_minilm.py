"""Real transformers against ONNX Runtime: all-MiniLM-L6-v2 on real text, and a small ViT exported from torch.

The interpreter runs a whole batch at once on a module imported for batch 1; ONNX Runtime runs the exported
static-shape models one sample at a time. Outputs must reach cosine >= 0.99999 and max |err| <= 1e-4 of the range.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from tpu_cal import ir
from tpu_cal.frontend.onnx_import import CONVERTERS, ImportOptions, import_onnx
from tpu_cal.interp.core import KERNELS, Interpreter
from tpu_cal.zoo import ModelUnavailable

pytestmark = pytest.mark.real
ort = pytest.importorskip("onnxruntime")


def close(y, ref, what=""):
    y, ref = np.asarray(y, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    assert y.shape == ref.shape and np.isfinite(y).all(), what
    cos = float(y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref)))
    err, rng = float(np.abs(y - ref).max()), float(ref.max() - ref.min())
    assert cos >= 0.99999, f"{what}: cosine {cos}"
    assert err <= 1e-4 * rng, f"{what}: max abs error {err} for a range of {rng}"
    return cos, err


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def per_sample(sess, feeds, name):
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run([name], {k: v[b:b + 1] for k, v in feeds.items()})[0] for b in range(n)])


# ------------------------------------------------------------------------------------------------------ MiniLM
@pytest.fixture(scope="module")
def minilm():
    from tpu_cal.zoo import minilm as zoo
    try:
        path = zoo.minilm_onnx()
        feeds = zoo.tokenize(zoo.texts(40))
    except ModelUnavailable as e:
        pytest.skip(str(e))
    graph = import_onnx(path)
    return zoo, path, graph, feeds


def test_minilm_matches_onnxruntime_on_real_text(minilm):
    zoo, path, graph, feeds = minilm
    lengths = feeds["attention_mask"].sum(1)
    long = [int(i) for i in np.flatnonzero(lengths == 128)[:2]]
    short = [int(i) for i in np.flatnonzero(lengths < 40)[:2]]
    assert len(long) == 2 and len(short) == 2, lengths
    pick = long + short
    batch = {k: v[pick] for k, v in feeds.items()}
    out = Interpreter(graph).run(batch)[graph.outputs[0]]
    sess = session(path)
    ref = per_sample(sess, batch, zoo.OUTPUT)
    assert out.shape == ref.shape == (4, 128, 384)
    for b in range(4):
        close(out[b], ref[b], f"sample {b} ({lengths[pick[b]]} tokens)")
    # the padded samples do depend on the mask: attending to the padding changes the real tokens' states
    b = 2
    unmasked = {k: v[b:b + 1].copy() for k, v in batch.items()}
    unmasked["attention_mask"][:] = 1
    valid = batch["attention_mask"][b].astype(bool)
    changed = sess.run([zoo.OUTPUT], unmasked)[0][0][valid]
    assert np.abs(changed - ref[b][valid]).max() > 100 * np.abs(out[b][valid] - ref[b][valid]).max()


def test_minilm_module_is_fused_and_static(minilm):
    zoo, path, graph, feeds = minilm
    ops = [n.op for n in graph.compute_nodes()]
    counts = {o: ops.count(o) for o in set(ops)}
    # decomposed LayerNorm and Erf-GELU fused, every Linear's bias inside its matmul
    assert counts["top.layer_norm"] == 13 and counts["top.gelu"] == 6 and counts["top.matmul"] == 48
    for gone in ("top.reduce", "top.sqrt", "top.pow", "top.div", "top.erf", "top.sub", "top.expand", "top.range",
                 "top.equal", "top.concat", "top.slice"):
        assert gone not in counts, gone
    assert set(counts) <= {"top.input", "top.matmul", "top.layer_norm", "top.gelu", "top.softmax", "top.reshape",
                           "top.permute", "top.add", "top.mul", "top.where", "top.isnan", "top.gather", "top.cast",
                           "top.and"}, counts
    # no shape arithmetic: nothing integer-valued is computed, the gathers read the model's ids directly
    ints = [n.name for n in graph.compute_nodes()
            if n.op != "top.input" and np.issubdtype(np.dtype(n.dtype), np.integer)]
    assert not ints, ints
    for n in graph.nodes:
        if n.op == "top.gather":
            assert n.inputs[1] in graph.inputs, n.name
    names = {n.name for n in graph.nodes}
    assert any(n.endswith("_LayerNorm") for n in names) and any(n.endswith("_Gelu") for n in names)
    # the fused ops read the model's own initializers, under their names
    import onnx
    inits = {t.name for t in onnx.load(path, load_external_data=False).graph.initializer}
    nodes = graph.node_map()
    for n in graph.nodes:
        if n.op in ("top.layer_norm", "top.matmul"):
            for i in n.inputs[1:]:
                if i is not None and nodes[i].op == "top.weight":
                    assert nodes[i].attrs["name"] in inits, (n.name, i)
    with ir.context() as ctx:
        ir.parse(graph.to_mlir(), ctx)


# ------------------------------------------------------------------------------------------------------ ViT
def _vit(conv: bool):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.n1, self.n2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2, self.act = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.GELU(approximate="tanh")

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(b, n, c))
            return x + self.fc2(self.act(self.fc1(self.n2(x))))

    class ViT(nn.Module):
        def __init__(self, img=32, patch=8, d=64, depth=2, heads=4, classes=10):
            super().__init__()
            self.patch, self.np = patch, (img // patch) ** 2
            if conv:
                self.embed = nn.Conv2d(3, d, patch, patch)
            else:
                self.embed = nn.Linear(3 * patch * patch, d)
            self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, self.np + 1, d) * 0.02)
            self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, classes)

        def forward(self, x):
            b, c, h, w = x.shape
            p = self.patch
            if conv:
                t = self.embed(x).flatten(2).transpose(1, 2)
            else:   # patchify with reshapes: a 6-D permute under batch scaling
                t = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, self.np, c * p * p)
                t = self.embed(t)
            t = torch.cat([self.cls.expand(b, -1, -1), t], dim=1) + self.pos
            t = self.norm(self.blocks(t))
            return t, self.head(t[:, 0])

    torch.manual_seed(0)
    return torch, ViT().eval()


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("conv", [False, True], ids=["patchify", "conv"])
def test_vit_matches_onnxruntime(tmp_path, opset, conv):
    if conv and ("Conv" not in CONVERTERS or "top.conv" not in KERNELS):
        pytest.skip("needs the Conv converter and the top.conv kernel (the convolutional half of the frontend)")
    torch, vit = _vit(conv)
    path = str(tmp_path / "vit.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(vit, (torch.randn(1, 3, 32, 32),), path, input_names=["image"],
                          output_names=["tokens", "logits"], opset_version=opset, dynamo=False)
    import onnx
    types = {n.op_type for n in onnx.load(path).graph.node}
    assert ("LayerNormalization" in types) == (opset >= 17) and "Tanh" in types
    graph = import_onnx(path, ImportOptions())
    ops = [n.op for n in graph.compute_nodes()]
    assert ops.count("top.layer_norm") == 5 and ops.count("top.gelu") == 2 and "top.reduce" not in ops
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    out = Interpreter(graph).run({"image": x})
    sess = session(path)
    for onnx_name, ours in zip(("tokens", "logits"), graph.outputs):
        ref = per_sample(sess, {"image": x}, onnx_name)
        assert out[ours].shape == ref.shape
        for b in range(len(x)):
            close(out[ours][b], ref[b], f"{onnx_name}[{b}]")
