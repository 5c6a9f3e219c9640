"""A real ComfyUI server in a child process, driven over its HTTP API exactly as a user's browser does.

    server = start_server(root, model_dirs={"checkpoints": [ckpt_dir]}, custom_node_dirs=[repo])
    prompt_id = server.queue_prompt(workflow)          # API-format dict (see workflows.py)
    history = server.wait(prompt_id, timeout=600)      # raises PromptFailed with ComfyUI's error
    server.stop()

Layout under ``root``: input/, output/, user/, custom_nodes/ (symlinks to each custom node dir, listed to
ComfyUI through an extra_model_paths yaml, so ComfyUI's own custom_nodes/ folder is left untouched),
extra_model_paths.yaml and server.log (stdout+stderr of the whole run; tests grep it, e.g. for
"lora key not loaded").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .comfy_env import comfy_python, comfyui_path, why_unavailable


class PromptFailed(RuntimeError):
    """ComfyUI rejected (validation) or failed (execution) a prompt; the message carries ComfyUI's own error."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_extra_model_paths(path: Path, model_dirs: dict[str, list[Path]], custom_nodes_dir: Path) -> Path:
    """An extra_model_paths yaml naming each model folder type (checkpoints, loras, vae, ...) and custom_nodes."""
    # is_default: these folders come first, so nodes that write (Save LoRA -> "loras") write here and
    # never into the ComfyUI tree under test.
    lines = ["lora_lab_tests:", "    is_default: true"]
    folders = dict(model_dirs)
    folders["custom_nodes"] = [custom_nodes_dir]
    for folder_type, dirs in folders.items():
        lines.append(f"    {folder_type}: |")
        for d in dirs:
            lines.append(f"        {Path(d).resolve()}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class ComfyServer:
    process: subprocess.Popen
    port: int
    root: Path
    log_path: Path
    input_dir: Path
    output_dir: Path
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- raw HTTP ------------------------------------------------------------------------------
    def _request(self, method: str, route: str, payload: dict | None = None, timeout: float = 30):
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base_url + route, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"raw": body.decode(errors="replace")}
            raise PromptFailed(f"{method} {route} -> HTTP {exc.code}: {json.dumps(parsed)[:4000]}", parsed) from None
        return json.loads(body) if body else None

    def get(self, route: str, timeout: float = 30):
        return self._request("GET", route, timeout=timeout)

    def post(self, route: str, payload: dict | None = None, timeout: float = 30):
        return self._request("POST", route, payload if payload is not None else {}, timeout=timeout)

    # -- API -----------------------------------------------------------------------------------
    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all registered nodes) or /object_info/<node_class>."""
        if node_class is None:
            return self.get("/object_info", timeout=120)
        return self.get(f"/object_info/{urllib.parse.quote(node_class)}").get(node_class, {})

    def queue_prompt(self, workflow: dict) -> str:
        """POST /prompt; returns the prompt_id. Validation errors raise PromptFailed with node_errors."""
        self._check_alive("queueing a prompt")
        try:
            reply = self.post("/prompt", {"prompt": workflow, "client_id": self.client_id})
        except PromptFailed as failure:
            raise PromptFailed(f"{failure}\nserver log tail:\n{self.log_tail(3000)}", failure.details) from None
        if reply.get("node_errors"):
            raise PromptFailed(f"prompt rejected: {json.dumps(reply.get('error'))[:1000]} "
                               f"{json.dumps(reply['node_errors'])[:4000]}", reply)
        return reply["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 600, poll: float = 0.5, stall: float = 60) -> dict:
        """Block until the prompt finished; return its history entry.

        Never waits past ``timeout``, and gives up early, with ComfyUI's own error text (the /history status
        messages and the server log tail), when the prompt failed (PromptFailed), the server died
        (PromptFailed), or the prompt is nowhere - not in /history, not running, not pending - or sits
        pending with nothing running for ``stall`` seconds: the prompt worker is gone (PromptLost).
        """
        deadline = time.monotonic() + timeout
        idle_since = None
        last_http_error = None
        while True:
            self._check_alive(f"running {prompt_id}")
            try:
                entry = self.history(prompt_id)
                state = None if _finished(entry) else self._queue_state(prompt_id)
                last_http_error = None
            except (OSError, ValueError) as exc:  # busy or half-dead server: retry until the deadline
                entry, state, last_http_error = None, "unknown", exc
            if _finished(entry):
                if entry["status"].get("status_str") == "error" or not entry["status"].get("completed"):
                    raise PromptFailed(f"prompt {prompt_id} failed: {_execution_error(entry)}\n"
                                       f"server log tail:\n{self.log_tail(4000)}", entry)
                return entry
            if state == "gone":
                # the worker may have finished between the two requests: look once more
                entry = self.history(prompt_id)
                if _finished(entry):
                    continue
                raise PromptLost(f"prompt {prompt_id} is neither finished, running nor pending (history entry: "
                                 f"{json.dumps(entry)[:1000]}); the prompt worker died? log tail:\n{self.log_tail()}")
            if state == "stalled":
                idle_since = idle_since if idle_since is not None else time.monotonic()
                if time.monotonic() - idle_since > stall:
                    raise PromptLost(f"prompt {prompt_id} pending for {stall}s with nothing running: the prompt "
                                     f"worker is dead or stuck; log tail:\n{self.log_tail()}")
            else:
                idle_since = None
            if time.monotonic() >= deadline:
                extra = f" (last HTTP error: {last_http_error!r})" if last_http_error else ""
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s{extra}; state {state}; "
                                   f"log tail:\n{self.log_tail()}")
            time.sleep(poll)

    def _queue_state(self, prompt_id: str) -> str:
        """'running' | 'pending' | 'stalled' (pending, nothing running) | 'gone' (in neither list), from GET /queue."""
        queue = self.get("/queue")
        running = queue.get("queue_running", [])
        pending = queue.get("queue_pending", [])
        if any(len(item) > 1 and item[1] == prompt_id for item in running):
            return "running"
        if any(len(item) > 1 and item[1] == prompt_id for item in pending):
            return "pending" if running else "stalled"
        return "gone"

    def _check_alive(self, doing: str) -> None:
        if self.process.poll() is not None:
            raise PromptFailed(f"ComfyUI server exited (rc={self.process.returncode}) while {doing}; "
                               f"log tail:\n{self.log_tail()}")

    def run(self, workflow: dict, timeout: float = 600) -> dict:
        """queue_prompt + wait."""
        return self.wait(self.queue_prompt(workflow), timeout)

    def interrupt(self) -> None:
        """POST /interrupt: what the UI's cancel button does."""
        self.post("/interrupt")

    def queue(self) -> dict:
        return self.get("/queue")

    def output_files(self, history: dict, node_id: str | None = None) -> list[Path]:
        """Files that output nodes (SaveImage, SaveLatent, ...) reported in a history entry, as local paths."""
        files = []
        for nid, outputs in history.get("outputs", {}).items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for items in outputs.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        base = self.output_dir if item.get("type", "output") == "output" else self.root / item["type"]
                        files.append(base / item.get("subfolder", "") / item["filename"])
        return files

    @staticmethod
    def execution_seconds(history: dict) -> float | None:
        """Wall time between ComfyUI's execution_start and execution_success messages for a prompt."""
        stamps = {name: data.get("timestamp") for name, data in history.get("status", {}).get("messages", [])}
        if stamps.get("execution_start") and stamps.get("execution_success"):
            return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
        return None

    # -- log & lifetime ------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def custom_node_import_failures(self) -> list[str]:
        """Custom node paths ComfyUI reported as "(IMPORT FAILED)" at start-up."""
        return [line.split(": ", 1)[1].strip() for line in self.log_text().splitlines()
                if "(IMPORT FAILED):" in line]

    def log_mark(self) -> int:
        """Current log length; pass to log_since to read only what a later prompt logged."""
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def wait_for_log(self, text: str, mark: int, prompt_id: str, timeout: float = 600, poll: float = 0.5) -> None:
        """Block until the log, after mark, contains text while prompt_id runs. Fails at once (with ComfyUI's
        error) when the prompt ends first or the server dies, and after timeout seconds at the latest."""
        deadline = time.monotonic() + timeout
        while text not in self.log_since(mark):
            self._check_alive(f"waiting for {text!r} from {prompt_id}")
            entry = self.history(prompt_id)
            if _finished(entry):
                detail = _execution_error(entry) if entry["status"].get("status_str") == "error" else "it succeeded"
                raise PromptFailed(f"prompt {prompt_id} ended before the log showed {text!r}: {detail}\n"
                                   f"log since mark:\n{self.log_since(mark)[-4000:]}", entry)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{text!r} not in the log after {timeout}s; log since mark:\n"
                                   f"{self.log_since(mark)[-4000:]}")
            time.sleep(poll)

    def stop(self, timeout: float = 20) -> None:
        """Stop the server process (and its process group) we started, by pid."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class PromptLost(PromptFailed):
    """The server is up but the prompt will never finish (its worker died or stopped taking prompts)."""


def _finished(entry: dict | None) -> bool:
    """A /history entry that ComfyUI wrote when the prompt ended (success, error or interrupt)."""
    return bool(entry) and isinstance(entry.get("status"), dict) and entry["status"].get("completed") is not None


def _execution_error(entry: dict) -> str:
    messages = entry.get("status", {}).get("messages", [])
    for name, data in messages:
        if name == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n{''.join(data.get('traceback', []))}")
    for name, data in messages:
        if name == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return json.dumps(entry.get("status"))[:4000]


def start_server(root: Path, model_dirs: dict[str, list[Path]] | None = None,
                 custom_node_dirs: dict[str, Path] | None = None, extra_args: list[str] | None = None,
                 timeout: float = 240, env: dict | None = None, cpu: bool = True) -> ComfyServer:
    """Start ``main.py --cpu`` (cpu=False: on the GPU) on a free port with its own input/output/user dirs under
    root; wait until ready.

    model_dirs: ComfyUI folder type -> dirs (e.g. {"checkpoints": [...], "loras": [...]}).
    custom_node_dirs: name -> path of a custom node package (symlinked as root/custom_nodes/<name>).
    """
    reason = why_unavailable()
    if reason:
        raise RuntimeError(reason)
    comfy = comfyui_path()
    root = Path(root)
    input_dir, output_dir, user_dir, nodes_dir = (root / n for n in ("input", "output", "user", "custom_nodes"))
    for d in (input_dir, output_dir, user_dir, nodes_dir):
        d.mkdir(parents=True, exist_ok=True)
    for name, path in (custom_node_dirs or {}).items():
        link = nodes_dir / name
        if not link.exists():
            link.symlink_to(Path(path).resolve(), target_is_directory=True)
    yaml_path = write_extra_model_paths(root / "extra_model_paths.yaml", model_dirs or {}, nodes_dir)
    port = free_port()
    log_path = root / "server.log"
    cmd = [comfy_python(), "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--extra-model-paths-config", str(yaml_path),
           "--input-directory", str(input_dir), "--output-directory", str(output_dir),
           "--user-directory", str(user_dir), "--database-url", "sqlite:///:memory:",
           *(extra_args or [])]
    log_handle = open(log_path, "ab")
    log_handle.write(("$ " + " ".join(cmd) + "\n").encode())
    log_handle.flush()
    process = subprocess.Popen(cmd, cwd=str(comfy), stdout=log_handle, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    log_handle.close()
    server = ComfyServer(process, port, root, log_path, input_dir, output_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited during start-up (rc={process.returncode}); log {log_path}:\n"
                               f"{server.log_tail()}")
        try:
            server.get("/system_stats", timeout=5)
            return server
        except (OSError, ValueError, PromptFailed):
            time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"ComfyUI not ready after {timeout}s; log {log_path}:\n{server.log_tail()}")
