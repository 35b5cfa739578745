#!/usr/bin/env python3
"""Writes big-log.jsonl next to this script: one build whose compile step logs about 1.2 MiB of
stdout (verbose CMake/Make compiler output) in 40 `log` events with byte offsets, plus a few
compiler warnings on stderr.

The stdout log is larger than the default inline limit of a step document (1 MiB), so ingesting
the stream shows the head/marker/tail form of `stdout` and `log_truncated: true`, while
`buildstore log bm05/18402/1 stdout` prints the whole text.

Standard library only and fully deterministic (no `random`, no clock): running it again writes the
same bytes.

    python3 examples/events/make_big_log.py
"""

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

OUT = Path(__file__).resolve().with_name("big-log.jsonl")

MASTER = "bm05"
BOOT = "7d3e"  # event ids are "{BOOT}-{seq}": unique per master, also across its restarts
BUILDER = "libtessel-linux64-asan"
BUILD_ID = 18402
NUMBER = 63
REPO = "https://git.example.org/tessel/libtessel.git"
REVISION = "c1d23c450dbe38e222da511f276a5a372d0ff774"
SUBJECT = "mesh: keep half-edge twins in one arena"
ROOT = "/builds/slave/libtessel-linux64-asan/build"

STDOUT_TARGET = 1_258_291  # bytes of stdout at most: 1.2 MiB
CHUNKS = 40
WARNING_CHUNKS = (7, 19, 30)  # stderr gets a warning after these stdout chunks

MODULES = ["core", "math", "geom", "mesh", "simd", "gpu", "io", "render", "anim", "util"]
NOUNS = [
    "edge", "face", "vertex", "patch", "normal", "tangent", "bounds", "quad", "triangle", "spline",
    "curve", "grid", "octree", "bvh", "index", "buffer", "arena", "stream", "shader", "uniform",
]
VERBS = [
    "collapse", "split", "merge", "weld", "refine", "smooth", "project", "sample", "pack", "cache",
    "sort", "hash",
]


class Lcg:
    """64-bit linear congruential generator: the same sequence on every Python version."""

    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return self.state >> 33

    def pick(self, seq):
        return seq[self.next() % len(seq)]


def stamp(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def compile_block(target, src_dir, stem, percent):
    obj = f"CMakeFiles/{target}.dir/{stem}.cpp.o"
    return (
        f"[{percent:3d}%] Building CXX object {src_dir}/{obj}\n"
        f"cd {ROOT}/obj/{src_dir} && /usr/bin/c++ -DTESSEL_ASAN=1 -DTESSEL_HAVE_SIMD=1 "
        f"-D{target}_EXPORTS -I{ROOT}/include -I{ROOT}/src -I{ROOT}/obj/include "
        f"-isystem {ROOT}/third_party/eigen -isystem {ROOT}/third_party/fmt/include "
        "-O1 -g -fno-omit-frame-pointer -fsanitize=address -fsanitize-address-use-after-scope "
        "-fPIC -Wall -Wextra -Wshadow -Wsign-compare -std=c++17 "
        f"-MD -MT {src_dir}/{obj} -MF {obj}.d -o {obj} -c {ROOT}/{src_dir}/{stem}.cpp\n"
    )


def link_block(target, src_dir, percent, objects):
    return (
        f"[{percent:3d}%] Linking CXX shared library lib{target}.so\n"
        f"cd {ROOT}/obj/{src_dir} && /usr/bin/cmake -E cmake_link_script CMakeFiles/{target}.dir/link.txt "
        "--verbose=1\n"
        f"/usr/bin/c++ -fPIC -O1 -g -fsanitize=address -shared -Wl,-soname,lib{target}.so "
        f"-o lib{target}.so {' '.join(objects)}\n"
        f"make[2]: Leaving directory '{ROOT}/obj'\n"
        f"[{percent:3d}%] Built target {target}\n"
    )


def plan_units():
    """(target, src_dir, stem) for every translation unit, library sources first, then tests."""
    lcg = Lcg(20260314)
    per_module = {m: [] for m in MODULES}
    for module in MODULES:
        seen = set()
        while len(per_module[module]) < 140:
            stem = f"{lcg.pick(NOUNS)}_{lcg.pick(VERBS)}"
            if stem not in seen:
                seen.add(stem)
                per_module[module].append(stem)
    units = []
    for module in MODULES:
        units += [(f"tessel_{module}", f"src/{module}", stem) for stem in per_module[module]]
    for module in MODULES:
        units += [(f"tessel_{module}_tests", f"tests/{module}", f"test_{stem}") for stem in per_module[module]]
    return units


def render(units):
    """The stdout log for these units as blocks (one per unit or target boundary), and which unit
    each block compiles (None for the others)."""
    count = len(units)
    blocks, owners = [f"make[1]: Entering directory '{ROOT}/obj'\n"], [None]
    current, current_dir, objects = None, None, []
    for i, (target, src_dir, stem) in enumerate(units):
        percent = (i * 100) // count
        if target != current:
            if current is not None:
                blocks.append(link_block(current, current_dir, percent, objects))
                owners.append(None)
            current, current_dir, objects = target, src_dir, []
            blocks.append(
                f"make[2]: Entering directory '{ROOT}/obj'\n"
                f"[{percent:3d}%] Scanning dependencies of target {target}\n"
            )
            owners.append(None)
        blocks.append(compile_block(target, src_dir, stem, percent))
        owners.append((target, src_dir, stem))
        objects.append(f"CMakeFiles/{target}.dir/{stem}.cpp.o")
    blocks.append(link_block(current, current_dir, 100, objects))
    owners.append(None)
    blocks.append(f"make[1]: Leaving directory '{ROOT}/obj'\n")
    owners.append(None)
    return blocks, owners


def stdout_blocks():
    """The stdout log as blocks: as many units as keep it within STDOUT_TARGET bytes."""
    units = plan_units()
    # A percentage is always 6 bytes wide, so a unit's size does not depend on its position.
    size, count = 0, 0
    for target, src_dir, stem in units:
        size += len(compile_block(target, src_dir, stem, 0).encode("utf-8"))
        if size > STDOUT_TARGET:
            break
        count += 1
    while True:
        blocks, owners = render(units[:count])
        if sum(len(b.encode("utf-8")) for b in blocks) <= STDOUT_TARGET:
            return blocks, owners
        count -= 1


def chunked(blocks, owners):
    """Splits the blocks into CHUNKS texts at block boundaries; also returns the units of each."""
    total = sum(len(b.encode("utf-8")) for b in blocks)
    per_chunk = total / CHUNKS
    chunks, chunk_units = [], []
    text, units, done = [], [], 0
    for block, owner in zip(blocks, owners):
        text.append(block)
        if owner:
            units.append(owner)
        done += len(block.encode("utf-8"))
        if done >= per_chunk * (len(chunks) + 1) and len(chunks) < CHUNKS - 1:
            chunks.append("".join(text))
            chunk_units.append(units)
            text, units = [], []
    chunks.append("".join(text))
    chunk_units.append(units)
    return chunks, chunk_units


def warning(kind, src_dir, stem):
    module = src_dir.split("/")[-1]
    path = f"{ROOT}/{src_dir}/{stem}.cpp"
    func = f"void tessel::{module}::{stem}(Mesh&, std::size_t)"
    if kind == 0:
        return (
            f"{path}: In function ‘{func}’:\n"
            f"{path}:214:17: warning: unused variable ‘tmp’ [-Wunused-variable]\n"
            "  214 |     std::size_t tmp = m.edge_count();\n"
            "      |                 ^~~\n"
        )
    if kind == 1:
        return (
            f"{path}: In function ‘{func}’:\n"
            f"{path}:87:23: warning: comparison of integer expressions of different signedness: "
            "‘int’ and ‘std::size_t’ {aka ‘long unsigned int’} [-Wsign-compare]\n"
            "   87 |     for (int i = 0; i < n; ++i) {\n"
            "      |                     ~~^~~\n"
        )
    return (
        f"{path}: In function ‘{func}’:\n"
        f"{path}:132:14: warning: declaration of ‘bounds’ shadows a previous local [-Wshadow]\n"
        "  132 |         auto bounds = patch.bounds();\n"
        "      |              ^~~~~~\n"
        f"{path}:118:10: note: shadowed declaration is here\n"
        "  118 |     auto bounds = m.bounds();\n"
        "      |          ^~~~~~\n"
    )


def main():
    lines = []
    seq = 0
    t = datetime(2026, 3, 14, 3, 10, 0, 412000, tzinfo=timezone.utc)
    offsets = {}

    def ev(type_, after_ms, **body):
        nonlocal seq, t
        seq += 1
        t += timedelta(milliseconds=after_ms)
        line = {"type": type_, "master_id": MASTER, "event_id": f"{BOOT}-{seq:04d}", "time": stamp(t)}
        line.update(body)
        lines.append(line)

    def log(after_ms, step, channel, text):
        offset = offsets.get((step, channel), 0)
        offsets[(step, channel)] = offset + len(text.encode("utf-8"))
        ev("log", after_ms, build_id=BUILD_ID, step=step, channel=channel, text=text, offset=offset)

    ev("builder_added", 0, builder=BUILDER, category="sanitizers", tags=["linux", "x86_64", "asan"],
       slaves=["bld-linux64-05", "bld-linux64-06"])
    ev("builder_state", 1000, builder=BUILDER, state="idle")
    ev("builder_state", 3_600_000, builder=BUILDER, state="building")
    ev("build_started", 96, builder=BUILDER, build_id=BUILD_ID, number=NUMBER, slaves=["bld-linux64-06"],
       changeset=REVISION, branch="main", repository=REPO, codebase="",
       reason="The SingleBranchScheduler named 'main-commits' triggered this build",
       properties={
           "branch": {"value": "main", "source": "Build"},
           "buildername": {"value": BUILDER, "source": "Builder"},
           "buildnumber": {"value": NUMBER, "source": "Build"},
           "platform": {"value": "linux64-asan", "source": "Builder"},
           "revision": {"value": REVISION, "source": "Build"},
           "scheduler": {"value": "main-commits", "source": "Scheduler"},
           "slavename": {"value": "bld-linux64-06", "source": "BuildSlave"},
       },
       changes=[{
           "revision": REVISION,
           "author": "Tomás Ferreira <tomas.ferreira@example.org>",
           "comments": SUBJECT,
           "files": ["src/mesh/half_edge.cpp", "src/mesh/half_edge.h", "src/mesh/arena.cpp"],
           "when": "2026-03-14T03:58:21Z",
           "branch": "main",
           "repository": REPO,
       }])

    ev("step_started", 640, build_id=BUILD_ID, step=0, name="git")
    log(1512, 0, "stdout", f"HEAD is now at {REVISION[:7]} {SUBJECT}\n{REVISION}\n")
    ev("property", 14, build_id=BUILD_ID, name="got_revision", value=REVISION, source="Git")
    ev("step_finished", 9, build_id=BUILD_ID, step=0, result=0, text="update")

    ev("step_started", 51, build_id=BUILD_ID, step=1, name="compile")
    log(8, 1, "header",
        "make -j8 VERBOSE=1\n"
        f" in dir {ROOT}/obj (timeout 3600 secs)\n"
        " watching logfiles {}\n"
        " argv: ['make', '-j8', 'VERBOSE=1']\n"
        " environment:\n"
        "  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1\n"
        "  CC=gcc-14\n"
        "  CXX=g++-14\n"
        "  HOME=/home/cltbld\n"
        "  PATH=/usr/local/bin:/usr/bin:/bin\n"
        f"  PWD={ROOT}/obj\n"
        " using PTY: False\n")

    blocks, owners = stdout_blocks()
    chunks, chunk_units = chunked(blocks, owners)
    warnings = 0
    for i, text in enumerate(chunks):
        log(6_000 + (i * 379) % 2_500, 1, "stdout", text)
        if i in WARNING_CHUNKS and chunk_units[i]:
            _, src_dir, stem = chunk_units[i][len(chunk_units[i]) // 2]
            log(21, 1, "stderr", warning(warnings, src_dir, stem))
            warnings += 1
    log(40, 1, "header", "program finished with exit code 0\nelapsedTime=271.804\n")
    ev("step_finished", 22, build_id=BUILD_ID, step=1, result=1, text=f"compile warnings ({warnings})")
    ev("build_finished", 57, build_id=BUILD_ID, result=1)
    ev("builder_state", 41, builder=BUILDER, state="idle")

    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    stdout_bytes = offsets[(1, "stdout")]
    print(f"wrote {OUT.name}: {len(lines)} events, compile stdout {stdout_bytes} bytes in {len(chunks)} chunks")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        # It takes no arguments: anything given (even --help) is answered, not written over.
        print(__doc__.strip())
        print(f"\nusage: python3 {sys.argv[0]}   (rewrites {OUT.name} next to this script)")
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    main()
