"""Pattern-match on the transformer families and YOLO heads the existing tests do not build: small torch
modules written here, each with the one structural trait of its family (DeiT's distillation token, Swin's
relative-position bias and window reverse, EVA's SwiGLU, CSWin's LePE convolution, DETR's conv backbone and
positional query/key, YOLOv7's and YOLOv10's box decoding), exported to ONNX and imported. The expected float ops
are named from how each module computes, the family from the trait.
"""
from __future__ import annotations

import os
import warnings

import pytest

from tpu_cal.search import patterns


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch builds the toy transformers")


def _import(torch, model, shape, tmp):
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    path = os.path.join(tmp, "m.onnx")
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), path, input_names=["x"], opset_version=17, dynamo=False)
    return import_onnx(path, ImportOptions())


def _parts(torch, heads=2):
    nn = torch.nn

    class Attention(nn.Module):
        """q, k, v projections; optional constant bias on the scores (Swin) or LePE conv on v (CSWin)."""

        def __init__(self, d, n_tokens, bias=False, lepe=False, qk_from=None):
            super().__init__()
            self.h, self.d = heads, d
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.bias = nn.Parameter(torch.randn(1, heads, n_tokens, n_tokens)) if bias else None
            self.lepe = nn.Conv2d(d, d, 3, 1, 1, groups=d) if lepe else None

        def split(self, t):
            b, n, _ = t.shape
            return t.reshape(b, n, self.h, self.d // self.h).permute(0, 2, 1, 3)

        def forward(self, x, qk=None):
            qk = x if qk is None else qk
            q, k, v = self.split(self.q(qk)), self.split(self.k(qk)), self.split(self.v(x))
            s = (q @ k.transpose(-2, -1)) * (self.d // self.h) ** -0.5
            if self.bias is not None:
                s = s + self.bias
            a = s.softmax(-1) @ v
            if self.lepe is not None:
                b, h, n, c = v.shape
                side = int(n ** 0.5)
                img = v.permute(0, 1, 3, 2).reshape(b, h * c, side, side)
                a = a + self.lepe(img).reshape(b, h, c, n).permute(0, 1, 3, 2)
            b, h, n, c = a.shape
            return self.o(a.permute(0, 2, 1, 3).reshape(b, n, h * c))

    class Block(nn.Module):
        """Pre-LN block: x + attn(ln(x)), x + mlp(ln(x)); mlp GELU or SwiGLU."""

        def __init__(self, d, n_tokens, swiglu=False, **kw):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = Attention(d, n_tokens, **kw)
            self.swiglu = swiglu
            if swiglu:
                self.w1, self.w2, self.w3 = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
            else:
                self.fc1, self.fc2, self.act = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.GELU()

        def forward(self, x):
            x = x + self.attn(self.n1(x))
            y = self.n2(x)
            y = self.w3(nn.functional.silu(self.w1(y)) * self.w2(y)) if self.swiglu else self.fc2(self.act(self.fc1(y)))
            return x + y

    class Encoder(nn.Module):
        """Patchify conv, learned tokens, blocks, final LN."""

        def __init__(self, d=16, tokens=1, depth=2, **kw):
            super().__init__()
            self.embed = nn.Conv2d(3, d, 4, 4)
            self.tok = nn.Parameter(torch.randn(1, tokens, d)) if tokens else None
            self.tokens = [nn.Parameter(torch.randn(1, 1, d)) for _ in range(tokens)]
            for k, t in enumerate(self.tokens):
                self.register_parameter(f"tok{k}", t)
            n = 16 + tokens
            self.pos = nn.Parameter(torch.randn(1, n, d))
            self.blocks = nn.Sequential(*[Block(d, n, **kw) for _ in range(depth)])
            self.norm = nn.LayerNorm(d)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([*(p.expand(t.shape[0], -1, -1) for p in self.tokens), t], 1) + self.pos
            return self.norm(self.blocks(t))

    return Attention, Block, Encoder


def _names(g, op):
    return [n.name for n in g.nodes if n.op == f"top.{op}"]


def _ln_adds(g):
    nodes = g.node_map()
    return {nodes[n].inputs[0] for n in _names(g, "layer_norm") if nodes[nodes[n].inputs[0]].op == "top.add"}


def _users(g, names, op):
    return {u.name for n in names for u in g.users()[n] if u.op == f"top.{op}"}


def test_deit_two_tokens(torch, tmp_path):
    _, _, Encoder = _parts(torch)
    torch.manual_seed(0)
    g = _import(torch, Encoder(tokens=2), (1, 3, 16, 16), tmp_path)
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("deit", 2)
    assert set(r.float_ops) == _ln_adds(g) | set(_names(g, "gelu"))        # no matmul after softmax
    assert len(_ln_adds(g)) == 5


def test_vit_one_token_keeps_matmul_after_softmax(torch, tmp_path):
    _, _, Encoder = _parts(torch)
    torch.manual_seed(0)
    g = _import(torch, Encoder(tokens=1), (1, 3, 16, 16), tmp_path)
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("vit", 2)
    av = _users(g, _names(g, "softmax"), "matmul")
    assert len(av) == 2 and set(r.float_ops) == _ln_adds(g) | set(_names(g, "gelu")) | av


def test_vit_20_blocks_keeps_matmul_after_gelu(torch, tmp_path):
    _, _, Encoder = _parts(torch)
    torch.manual_seed(0)
    g = _import(torch, Encoder(d=8, tokens=1, depth=20), (1, 3, 16, 16), tmp_path)
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("vit", 20)
    fc2 = _users(g, _names(g, "gelu"), "matmul")
    assert len(fc2) == 20 and set(r.float_ops) == _ln_adds(g) | set(_names(g, "gelu")) | fc2


def test_eva_swiglu(torch, tmp_path):
    _, _, Encoder = _parts(torch)
    torch.manual_seed(0)
    g = _import(torch, Encoder(tokens=1, swiglu=True), (1, 3, 16, 16), tmp_path)
    nodes = g.node_map()
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("eva", 2)
    # silu(w1 y) = w1y * sigmoid(w1y), gated by w2 y, read by w3
    sig = set(_names(g, "sigmoid"))
    silu = {m for m in _names(g, "mul") if sig & set(nodes[m].inputs)}
    gate = {u.name for m in silu for u in g.users()[m] if u.op == "top.mul"}
    w3 = _users(g, gate, "matmul")
    assert len(sig) == len(silu) == len(gate) == len(w3) == 2
    assert set(r.float_ops) == set(_names(g, "add")) | sig | silu | w3


def test_cswin_lepe(torch, tmp_path):
    _, _, Encoder = _parts(torch)
    torch.manual_seed(0)
    g = _import(torch, Encoder(tokens=0, lepe=True), (1, 3, 16, 16), tmp_path)
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("cswin", 2)
    assert set(r.float_ops) == _ln_adds(g) | set(_names(g, "gelu"))


def test_swin_bias_and_window_reverse(torch, tmp_path):
    Attention, _, _ = _parts(torch)
    nn = torch.nn

    class SwinV2Block(nn.Module):
        """Windows of 2x2 tokens on a 4x4 map, relative-position bias, post-norm (LN after window reverse)."""

        def __init__(self, d=16):
            super().__init__()
            self.embed = nn.Conv2d(3, d, 4, 4)
            self.attn = Attention(d, 4, bias=True)
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.fc1, self.fc2, self.act = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.GELU()

        def forward(self, x):
            t = self.embed(x)                                       # 1, d, 4, 4
            b, c, h, w = t.shape
            t = t.permute(0, 2, 3, 1)
            win = t.reshape(b, 2, 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(4 * b, 4, c)
            a = self.attn(win)
            back = a.reshape(b, 2, 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, 16, c)
            x = t.reshape(b, 16, c) + self.n1(back)
            return x + self.n2(self.fc2(self.act(self.fc1(x))))

    torch.manual_seed(0)
    g = _import(torch, SwinV2Block(), (1, 3, 16, 16), tmp_path)
    nodes = g.node_map()
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("swin", 1)
    ln_in = nodes[nodes[_names(g, "layer_norm")[0]].inputs[0]]
    assert ln_in.op == "top.reshape" and nodes[ln_in.inputs[0]].op == "top.permute"
    assert set(r.float_ops) == set(_names(g, "add")) | set(_names(g, "gelu")) | {ln_in.inputs[0]}


def test_detr_backbone_and_positional_query_key(torch, tmp_path):
    Attention, _, _ = _parts(torch)
    nn = torch.nn

    class Detr(nn.Module):
        def __init__(self, d=16):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, d, 3, 2, 1), nn.ReLU(), nn.Conv2d(d, d, 3, 2, 1))
            self.pos = nn.Parameter(torch.randn(1, 16, d))
            self.attn = Attention(d, 16)
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

        def forward(self, x):
            src = self.backbone(x).flatten(2).permute(0, 2, 1)      # 1, 16, d
            src = self.n1(src + self.attn(src, qk=src + self.pos))
            return self.n2(src + self.fc2(torch.relu(self.fc1(src))))

    torch.manual_seed(0)
    g = _import(torch, Detr(), (1, 3, 16, 16), tmp_path)
    nodes = g.node_map()
    r = patterns.match(g)
    assert (r.family, r.blocks) == ("detr", 1)
    kept = set()
    for n in g.compute_nodes():
        op = n.op[4:]
        acts = [i for i in n.inputs if i is not None and nodes[i].op != "top.weight"]
        if op in ("conv", "scale", "reshape"):
            continue
        if op == "matmul" and len(acts) == 1 and nodes[acts[0]].op in ("top.layer_norm", "top.reshape"):
            continue
        kept.add(n.name)
    assert set(r.float_ops) == kept
    assert any(nodes[n].op == "top.relu" for n in kept)       # the backbone's activations too
    assert not any(nodes[n].op == "top.conv" for n in kept)


# ------------------------------------------------------------------------------------------- YOLO v7 / v10
def _detector(torch, head: str, spp: bool = False):
    """SPPF backbone + one decoding head: 'v7' (xy = s*2k + g', wh = s^2 * 4a) or 'v10' (xyxy from distances)."""
    import test_real_cnn as cnn
    nn = torch.nn
    Conv, _, _, SPPF = cnn._yolo_modules(torch)

    class SPP(nn.Module):
        """YOLOv3-SPP / early YOLOv5: pools 5, 9, 13 side by side."""

        def __init__(self, c1, c2):
            super().__init__()
            self.cv1, self.cv2 = Conv(c1, c1 // 2, 1), Conv(c1 // 2 * 4, c2, 1)
            self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

        def forward(self, x):
            x = self.cv1(x)
            return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))

    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), SPP(32, 32) if spp else SPPF(32, 32))
            self.m = nn.Conv2d(32, 3 * 7 if head == "v7" else 4 + 3, 1)
            ny = nx = 4
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            self.grid = torch.stack((xv, yv), -1).float()

        def forward(self, x):
            y = self.m(self.b(x))                                   # 1, c, 4, 4
            if head == "v7":
                y = y.view(1, 3, 7, 4, 4).permute(0, 1, 3, 4, 2).sigmoid()
                xy, wh, conf = y.split((2, 2, 3), 4)
                xy = xy * 16.0 + (self.grid * 8.0 - 4.0)            # folded constants, as YOLOv7's export
                wh = wh ** 2 * torch.full((1, 3, 4, 4, 2), 40.0)
                return torch.cat((xy, wh, conf), 4).view(1, 48, 7)
            y = y.flatten(2)                                        # 1, 7, 16
            dist, cls = y.split((4, 3), 1)
            lt, rb = dist.chunk(2, 1)
            a = self.grid.view(-1, 2).transpose(0, 1).unsqueeze(0) + 0.5
            box = torch.cat((a - lt, a + rb), 1) * torch.full((1, 16), 8.0)
            return torch.cat((box, cls.sigmoid()), 1)

    return Det()


@pytest.mark.parametrize("spp", [False, True], ids=["sppf", "spp"])
@pytest.mark.parametrize("head,family,ops", [
    ("v7", "yolov7", ["top.mul", "top.add", "top.pow", "top.mul", "top.concat", "top.reshape"]),
    ("v10", "yolov10", ["top.sub", "top.add", "top.concat", "top.mul", "top.concat"])])
def test_yolo_v7_v10_heads(torch, tmp_path, head, family, ops, spp):
    from tpu_cal.search.fp_forward import descendants
    torch.manual_seed(0)
    g = _import(torch, _detector(torch, head, spp), (1, 3, 16, 16), tmp_path)
    assert len(patterns.sppf_blocks(patterns.View(g))) == 1
    nodes = g.node_map()
    r = patterns.match(g)
    assert (r.family, r.blocks) == (family, 1)
    # everything computed after the head's sigmoid (v7) or distance slices (v10), except slices and cls.sigmoid
    src = _names(g, "sigmoid")[-1] if head == "v7" else nodes[_names(g, "slice")[0]].inputs[0]
    expected = {d for d in descendants(g, [src]) if nodes[d].op != "top.slice"} - {src}
    if head == "v10":
        expected -= set(_names(g, "sigmoid"))
    assert set(r.float_ops) == expected
    assert sorted(nodes[n].op for n in r.float_ops) == sorted(ops)


def test_v7_head_without_spp_is_not_yolo(torch, tmp_path):
    """Without SPP(F) only the anchor-free decoding identifies a detector: a v7-style head alone does not."""
    import test_real_cnn as cnn
    nn = torch.nn
    det = _detector(torch, "v7")
    Conv = cnn._yolo_modules(torch)[0]
    det.b = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), nn.MaxPool2d(3, 1, 1))
    g = _import(torch, det, (1, 3, 16, 16), tmp_path)
    assert patterns.sppf_blocks(patterns.View(g)) == [] and patterns.match(g) is None
