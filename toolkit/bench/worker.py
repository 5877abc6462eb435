"""One bench model per worker process: its peak RSS is its own, and a runtime that aborts
(LiteRT can, on a file it cannot read) takes only its worker down. The worker times
each run itself, so the pipe to the parent is not in the numbers. A model that fails to
load is reported with its fix: re-export a corrupt file, or change the bench option."""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any


def _build(spec: dict):
    from toolkit.bench.runtimes import load_litert, load_onnx, load_torch

    if spec["runtime"] == "onnxruntime":
        return load_onnx(Path(spec["path"]), spec["threads"], spec["prompt"])
    if spec["runtime"] == "litert":
        return load_litert(Path(spec["path"]), spec["threads"], spec["prompt"])
    return load_torch(spec["path"], spec["threads"], spec["prompt"], spec["max_context"])


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker_main(conn, spec: dict) -> None:
    from toolkit.bench.runtimes import BenchSettingError
    from toolkit.quiet import quiet_libraries

    quiet_libraries()
    try:
        start = time.perf_counter()
        try:
            runnable = _build(spec)
        except BenchSettingError as exc:  # an option, not the file: its own message
            conn.send(("error", str(exc)))
            return
        except Exception as exc:  # the file itself is bad: the parent names the fix
            conn.send(("load-error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("loaded", time.perf_counter() - start, runnable.llm))
        while True:
            command = conn.recv()
            if command == "stop":
                break
            if command == "first":  # the first call after load: prefill for an LLM
                conn.send(_timed(runnable.prefill or runnable.step))
            elif command == "step":
                conn.send(_timed(runnable.step))
            elif command == "prefill":
                conn.send(_timed(runnable.prefill))
            elif command == "outputs":
                conn.send(runnable.outputs())
            elif command == "rss":
                conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except Exception as exc:  # reported to the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def load_failure(name: str, runtime: str, detail: str) -> str:
    """One line for a model its runtime cannot load: a corrupt or foreign exported file
    is re-exported; a PyTorch model's loader already names its own fix."""
    detail = detail.splitlines()[0][:200] if detail else "no detail"
    fix = REEXPORT.get(runtime)
    if fix is None:
        return f"{name}: {detail}"
    return f"{name} could not be loaded by {runtime} ({detail}): {fix}"


REEXPORT = {
    "onnxruntime": "it is not a complete ONNX model: re-export it with `toolkit export onnx "
                   "--model MODEL --out FILE.onnx`",
    "litert": "it is not a complete LiteRT flatbuffer: re-export it with `toolkit export "
              "tflite --model MODEL --out FILE.tflite`",
}


class Worker:
    """The parent's handle: `call(command)` returns what the worker sent back."""

    def __init__(self, spec: dict):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, spec), daemon=True)
        self.process.start()
        child.close()
        self.name, self.runtime = spec["name"], spec["runtime"]
        self.loading = True
        reply = self._receive()
        self.loading = False
        _, self.load_seconds, self.llm = reply

    def _receive(self) -> Any:
        try:
            reply = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            died = f"the runtime's process died (exit code {self.process.exitcode})"
            if self.loading:
                raise RuntimeError(load_failure(self.name, self.runtime, died)) from None
            raise RuntimeError(f"{self.name}: {died}; run it alone to see why") from None
        if isinstance(reply, tuple) and reply and reply[0] == "load-error":
            raise RuntimeError(load_failure(self.name, self.runtime, reply[1]))
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise RuntimeError(f"{self.name}: {reply[1]}")
        return reply

    def call(self, command: str) -> Any:
        self.conn.send(command)
        return self._receive()

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
