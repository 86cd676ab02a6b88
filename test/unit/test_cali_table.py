"""cali_table: TPU-MLIR's layout round-trips, TPU-MLIR's own files read, malformed lines named by file:line."""
import datetime
import os

import pytest

from tpu_cal.errors import UserError
from tpu_cal.formats import CaliTable, format_cali_table, make_header, read_cali_table, write_cali_table
from tpu_cal.formats.cali_table import parse_cali_table

# as TPU-MLIR's run_calibration writes it (int4 and asym blocks included), with CRLF ends and runs of spaces
TPU_MLIR_TABLE = (
    "# mlir version: 1.9.beta.0-86-g0c6f4e5b8 cali version 1.0\r\n"
    "# mlir: yolov5s.mlir\r\n"
    "# genetated time: 2024-06-11 10:00:59.743675\r\n"
    "# quantization threshold calculation method: kl\r\n"
    "# histogram number: 2048\r\n"
    "# sample number: 100\r\n"
    "###\r\n"
    "# tune number: 10\r\n"
    "###\r\n"
    "# op_name    threshold    min    max\r\n"
    "images 1.0000080 0.0000000 1.0000000\r\n"
    "122_Conv   56.4281803  -102.5830231  97.6811752\r\n"
    "124_Mul 38.1586478 -0.2784646 97.6811752\r\n"
    "\r\n"
    "#int4_th\r\n"
    "images 1.0000080 -1.1428663 1.0000080\r\n"
    "122_Conv 18.4124622 -21.0428139 18.4124622\r\n"
    "\r\n"
    "#asym_op\r\n"
    "124_Mul\r\n"
    "126_Conv\r\n"
)


def test_reads_tpu_mlir_file(tmp_path):
    p = tmp_path / "yolov5s_cali_table"
    p.write_bytes(TPU_MLIR_TABLE.encode())
    t = read_cali_table(str(p))
    assert list(t.thresholds) == ["images", "122_Conv", "124_Mul"]
    assert t.thresholds["122_Conv"] == (56.4281803, -102.5830231, 97.6811752)
    assert t.int4["122_Conv"] == (18.4124622, -21.0428139, 18.4124622)
    assert t.asym == ["124_Mul", "126_Conv"]
    assert t.method == "kl" and t.sample_number == 100 and t.histogram_number == 2048 and t.tune_number == 10
    assert t.header["mlir"] == "yolov5s.mlir"
    assert t.header["genetated time"] == "2024-06-11 10:00:59.743675"


def test_reads_older_and_other_tpu_mlir_layouts():
    old = ("# genetated time: 2022-08-11 10:00:59.743675\n# histogram number: 2048\n# sample number: 100\n###\n"
           "# op_name    threshold    min    max\ninput 1.0 -1.0 1.0\n")
    t = parse_cali_table(old)
    assert t.thresholds == {"input": (1.0, -1.0, 1.0)} and t.tune_number is None
    fp8 = ("# genetated time: x\n#tpu-mlir-fp8 caliration table\n# sample number: 4\n###\n"
           "# op_name    threshold    min    max\na 2.0 -2.0 2.0\n")
    t = parse_cali_table(fp8)
    assert t.fp8 == {"a": (2.0, -2.0, 2.0)} and t.thresholds == {} and t.sample_number == 4
    mq = ("# op_name threshold min max\nx 3.0 -3.0 3.0\n#int4_th\nx 1.0 -1.1 1.0\n#weight_scale\n"
          "conv_weight 3 0.1 0.2 0.3 3 0 0 0\n#int4_op\nconv\n")
    t = parse_cali_table(mq)
    assert t.weight_scales == {"conv_weight": [0.1, 0.2, 0.3]} and t.int4_ops == ["conv"]


def test_round_trip(tmp_path):
    header = make_header(mlir="m.mlir", method="mse", histogram_bins=2048, samples=32, tune_num=0,
                         time=datetime.datetime(2025, 1, 2, 3, 4, 5))
    t = CaliTable(
        thresholds={"in/put:0": (2.64, -2.1179039, 2.64), "conv_Conv": (5.123456789, -7.2, 9.1),
                    "tiny_Mul": (1.2345678e-9, -1e-9, 1.1e-9), "big": (3.5e7, -3.5e7, 0.0)},
        int4={"conv_Conv": (1.2, -1.2 * 8 / 7, 1.2)},
        asym=["silu_SiLU", "conv_Conv"],
        header=header)
    p = tmp_path / "cali_table"
    write_cali_table(str(p), t)
    text = p.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# mlir version: tpu_cal ") and lines[0].endswith(" cali version 1.0")
    assert lines[1:9] == ["# mlir: m.mlir", "# genetated time: 2025-01-02 03:04:05",
                          "# quantization threshold calculation method: mse", "# histogram number: 2048",
                          "# sample number: 32", "###", "# tune number: 0", "###"]
    assert "conv_Conv 5.1234568 -7.2000000 9.1000000" in lines
    assert "tiny_Mul 1.2345678e-09 -1.0000000e-09 1.1000000e-09" in lines
    back = read_cali_table(str(p))
    assert back.header == header
    assert list(back.thresholds) == list(t.thresholds)
    for table, ref in ((back.thresholds, t.thresholds), (back.int4, t.int4)):
        for k, v in ref.items():
            assert table[k] == pytest.approx(v, rel=1e-7, abs=5e-8)
    assert back.thresholds["tiny_Mul"][0] > 0
    assert back.asym == t.asym
    assert format_cali_table(back) == text            # stable under a second round trip
    assert [f for f in os.listdir(tmp_path) if f != "cali_table"] == []   # no temporary left behind


@pytest.mark.parametrize("line,problem", [
    ("conv 1.0 -1.0", "4 fields), got 3"),
    ("conv 1.0 -1.0 1.0 7", "4 fields), got 5"),
    ("conv abc -1.0 1.0", "threshold 'abc' is not a number"),
    ("conv 1.0 -1.0 1,5", "max '1,5' is not a number"),
    ("conv nan -1.0 1.0", "threshold nan is not finite"),
    ("conv 1.0 -inf 1.0", "min -inf is not finite"),
    ("conv 0.0000000 -1.0 1.0", "threshold 0.0000000 is not positive"),
    ("conv -2.0 -1.0 1.0", "threshold -2.0 is not positive"),
    ("conv 2.0 1.0 -1.0", "min 1.0 is greater than max -1.0"),
    ("images 2.0 -1.0 1.0", "'images' is listed twice (first at line 2)"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, problem):
    p = tmp_path / "bad_table"
    p.write_text("# op_name threshold min max\nimages 1.0 0.0 1.0\n\n" + line + "\n")
    with pytest.raises(UserError) as e:
        read_cali_table(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}:4: ") and problem in msg


def test_malformed_section_lines():
    with pytest.raises(UserError, match=r"<cali_table>:3: expected one op name per line in the #asym_op block"):
        parse_cali_table("a 1 0 1\n#asym_op\nb c\n")
    with pytest.raises(UserError, match=r":3: expected 3 scales after the count, got 2"):
        parse_cali_table("a 1 0 1\n#weight_scale\nw 3 0.1 0.2\n")
    with pytest.raises(UserError, match=r":3: threshold 'x' is not a number"):
        parse_cali_table("a 1 0 1\n#int4_th\na x 0 1\n")


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="calibration table not found"):
        read_cali_table(str(tmp_path / "missing"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not a text calibration table"):
        read_cali_table(str(tmp_path / "bin"))
    with pytest.raises(UserError, match="does not exist"):
        write_cali_table(str(tmp_path / "no" / "dir" / "t"), CaliTable(thresholds={"a": (1.0, 0.0, 1.0)}))


def test_writer_refuses_unwritable_entries():
    with pytest.raises(ValueError, match="not positive and finite"):
        format_cali_table(CaliTable(thresholds={"a": (0.0, 0.0, 1.0)}))
    with pytest.raises(ValueError, match="cannot be written"):
        format_cali_table(CaliTable(thresholds={"a b": (1.0, 0.0, 1.0)}))
