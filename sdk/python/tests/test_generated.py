"""The kept generated code (tether_plugin/proto) is what scripts/generate makes from bus.proto."""

import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]
KEPT = SDK / "src" / "tether_plugin" / "proto"
FILES = ("bus_pb2.py", "bus_pb2.pyi", "bus_pb2_grpc.py")


def test_the_generated_code_is_current(tmp_path):
    made = subprocess.run([sys.executable, str(SDK / "scripts" / "generate"), "--out",
                           str(tmp_path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for name in FILES:
        assert (tmp_path / name).read_text() == (KEPT / name).read_text(), (
            f"{KEPT / name} is not what bus.proto makes now: run sdk/python/scripts/generate")


def test_the_generated_code_imports_inside_the_package():
    text = (KEPT / "bus_pb2_grpc.py").read_text()
    assert "from . import bus_pb2 as" in text
    assert "from tether.bus" not in text
