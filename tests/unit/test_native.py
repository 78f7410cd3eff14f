"""The compiled rules engine (pipeline/infra/native.py): same results as the source, never a stale build.

The parity tests run `metering compute`'s engine in two fresh interpreters, one compiled and one
with ``METERING_INTERPRETED=1``, over the same files, and compare every billing session.
"""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from devtools import traffic
from pipeline.contract.events import AgentTransfer, ConversationTurn
from pipeline.infra import native
from pipeline.rules import meter
from pipeline.rules.meter import TRANSFER_FIELDS, TURN_FIELDS

T0 = 1_793_527_200_000  # 2026-11-01T10:00:00Z

ENGINE_RUN = """
import sys
from datetime import date
from pathlib import Path

import msgspec

import pipeline
from pipeline.compute import Days, Periods, compute
from pipeline.rules.attribution import zone
from pipeline.rules.config import RulesConfig

invalid = []
result = compute(
    Path(sys.argv[1]),
    zone(sys.argv[2]),
    RulesConfig(),
    now_ms=1_893_456_000_000,
    on_invalid=lambda lineno, reason: invalid.append((lineno, reason)),
    keep=Days(date(2000, 1, 1), date(2100, 1, 1)),
    periods=Periods(sys.argv[3], Days(date(2026, 10, 31), date(2026, 11, 2))),
)
print(pipeline.ENGINE)
print(msgspec.json.encode(
    [result.rows, result.stats.as_dict(), result.sessions, result.unfinished, invalid, result.resorted,
     result.report(zero_fill=True)]
).decode())
"""


def run_engine(path: Path, tz: str, period: str, *, interpreted: bool) -> tuple[str, object]:
    env = {k: v for k, v in os.environ.items() if k != native.INTERPRETED_ENV}
    if interpreted:
        env[native.INTERPRETED_ENV] = "1"
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_RUN, str(path), tz, period], env=env, capture_output=True, text=True, check=True
    )
    engine, output = done.stdout.splitlines()
    return engine, json.loads(output)


GARBAGE = (b"not json", b'{"type": "conversation_turn"}', b"[1, 2]", b"\xff\xfe", b'{"type": "alert_delivered"')


def traffic_file(path: Path, count: int, *, seed: int, shuffle: bool) -> Path:
    """Realistic events with 25 invalid lines and 5 blank ones (not errors)."""
    lines = [traffic.encode(ev) for ev in traffic.events(T0, count, seed=seed)]
    rng = random.Random(seed)
    for i, at in enumerate(sorted(rng.sample(range(len(lines)), 30), reverse=True)):
        lines.insert(at, GARBAGE[i % 5] if i < 25 else b"")
    if shuffle:  # blocks far out of order: the single pass finds an event late and sorts the file
        blocks = [lines[i : i + 500] for i in range(0, len(lines), 500)]
        rng.shuffle(blocks)
        lines = [line for block in blocks for line in block]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


needs_build = pytest.mark.skipif(
    native.stale() != [], reason="no up-to-date compiled engine here (make setup builds it)"
)


@needs_build
def test_this_process_runs_the_compiled_engine() -> None:
    """`make test` builds the engine first, so the whole suite exercises the compiled code."""
    assert pipeline.ENGINE == "compiled"
    assert native.is_compiled(meter)


@needs_build
@pytest.mark.parametrize(
    ("tz", "shuffle", "period"),
    [("UTC", False, "day"), ("Asia/Kolkata", True, "hour"), ("Asia/Kathmandu", False, "week")],
)
def test_compiled_and_interpreted_engines_bill_the_same_sessions(
    tmp_path: Path, tz: str, shuffle: bool, period: str
) -> None:
    path = traffic_file(tmp_path / "events.jsonl", 12_000, seed=5, shuffle=shuffle)
    compiled_engine, compiled = run_engine(path, tz, period, interpreted=False)
    interpreted_engine, interpreted = run_engine(path, tz, period, interpreted=True)
    assert (compiled_engine, interpreted_engine) == ("compiled", "interpreted")
    _, _, sessions, _, invalid, resorted, (_, report) = compiled  # type: ignore[misc]
    assert len(sessions) > 1000, "the file must bill enough sessions to compare"
    assert len(report) > 2 if period != "hour" else len(report) > 24
    assert len(invalid) == 25
    assert resorted is shuffle
    assert compiled == interpreted


def test_a_build_is_stale_when_a_source_changes(tmp_path: Path) -> None:
    modules = ("pkg.a", "pkg.b")
    (tmp_path / "pkg").mkdir()
    for name in ("a", "b"):
        (tmp_path / "pkg" / f"{name}.py").write_text(f"X = {name!r}\n")
    manifest = tmp_path / "manifest.json"
    assert native.stale(manifest, tmp_path, modules) == ["no build"]
    manifest.write_text(json.dumps(native.fingerprint(tmp_path, modules)))
    assert native.stale(manifest, tmp_path, modules) == []
    (tmp_path / "pkg" / "b.py").write_text("X = 'changed'\n")
    assert native.stale(manifest, tmp_path, modules) == ["pkg.b"]


def fake_build(root: Path) -> Path:
    """A project with an engine module, a module it imports, and a build that matches them."""
    package = root / "pipeline"
    package.mkdir()
    (package / "engine.py").write_text("X = 1\n")
    (package / "lib.py").write_text("LIMIT = 1\n")
    (package / "native__mypyc.fake.so").write_bytes(b"")
    (package / "native-build.json").write_text(
        json.dumps(native.fingerprint(root, ["pipeline.engine", "pipeline.lib"]))
    )
    return package


def choose(root: Path, finders: list[object], **environ: str) -> str:
    return native.choose(root, ["pipeline.engine"], depends=["pipeline.lib"], meta_path=finders, environ=environ)


def test_a_stale_build_is_not_used_the_sources_are(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    package = fake_build(tmp_path)
    finders: list[object] = []
    assert choose(tmp_path, finders) == "compiled"
    assert finders == []

    (package / "lib.py").write_text("LIMIT = 2\n")  # a constant the build may have inlined
    assert choose(tmp_path, []) == "interpreted"
    assert "out of date (pipeline.lib changed)" in caplog.text
    (package / "lib.py").write_text("LIMIT = 1\n")

    (package / "engine.py").write_text("X = 2\n")
    assert choose(tmp_path, finders) == "interpreted"
    assert "out of date (pipeline.engine changed)" in caplog.text
    (finder,) = finders
    spec = finder.find_spec("pipeline.engine")  # type: ignore[attr-defined]
    assert spec.origin == str(package / "engine.py")
    assert finder.find_spec("pipeline.other") is None  # type: ignore[attr-defined]


def test_the_interpreted_switch_wins_over_an_up_to_date_build(tmp_path: Path) -> None:
    fake_build(tmp_path)
    finders: list[object] = []
    assert choose(tmp_path, finders, **{native.INTERPRETED_ENV: "1"}) == "interpreted"
    assert len(finders) == 1
    assert choose(tmp_path, []) == "compiled"


def test_without_a_build_the_engine_runs_interpreted(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "engine.py").write_text("X = 1\n")
    finders: list[object] = []
    assert choose(tmp_path, finders) == "interpreted"
    assert finders == []


def test_the_engine_unpacks_event_fields_in_their_declared_order() -> None:
    """``Meter.apply`` reads a turn or a transfer with one ``astuple``: a reordered struct must fail here."""
    assert ConversationTurn.__struct_fields__ == TURN_FIELDS
    assert AgentTransfer.__struct_fields__ == TRANSFER_FIELDS


def test_a_build_depends_on_every_project_module_the_engine_imports() -> None:
    """mypyc builds imported types and constants into the extension: a change there must make it stale."""
    imported: set[str] = set()
    for module in native.MODULES:
        tree = ast.parse(native.source_of(module).read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in ("pipeline", "consumers")
            ):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.split(".")[0] in ("pipeline", "consumers"))
    assert imported - set(native.MODULES) == set(native.DEPENDS)
