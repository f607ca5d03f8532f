"""Draw docs/design/architecture.png: the pipeline's stages and the verifier's contracts.

Run: .venv/bin/python scripts/draw_architecture.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OWNER = [
    ("0 plan", "pipeline/plan.py\n(time, memory)"),
    ("1 seeds", "pipeline/seeds.py"),
    ("2 generate", "pipeline/generate.py\n(objective.py)"),
    ("3 calibrate", "pipeline/calibrate.py\n(noise.py)"),
    ("4 refine", "pipeline/refinement.py"),
    ("5 twins", "pipeline/twins.py"),
    ("6 select", "selectors/\nreach manc random\ntamper_aware"),
    ("7 describe", "pipeline/describe.py\n(coverage/reach.py)"),
]
VERIFY = [
    ("Fingerprint", "fingerprint/contents.py\nfileformat.py, meta.py"),
    ("verify", "verification/verify.py\nspecs.py"),
    ("Target.query", "targets/base.py\ncontract.py"),
    ("_answer", "local.py  oip.py\noip_grpc.py  torchserve.py\ntfserving.py  decoys.py"),
    ("transport", "targets/transport.py\nhttp.py (watchdog)"),
]


def box(ax, x: float, y: float, title: str, files: str, color: str) -> None:  # type: ignore[no-untyped-def]
    ax.add_patch(FancyBboxPatch((x, y), 1.7, 1.15, boxstyle="round,pad=0.04", fc=color, ec="#333", lw=1))
    ax.text(x + 0.85, y + 0.88, title, ha="center", va="center", fontsize=9, weight="bold")
    ax.text(x + 0.85, y + 0.42, files, ha="center", va="center", fontsize=6.5, family="monospace")


def arrow(ax, a: tuple[float, float], b: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, lw=1, color="#333"))


def main() -> None:
    fig, ax = plt.subplots(figsize=(17, 5.2))
    ax.set_xlim(-0.2, 16.2)
    ax.set_ylim(-0.4, 5.2)
    ax.axis("off")
    ax.text(0, 4.9, "owner side: make_fingerprint (pipeline/make.py); stages 1-4 = build_candidates, "
            "reused by evaluate/cells.py", fontsize=9)
    for i, (t, f) in enumerate(OWNER):
        box(ax, i * 2.0, 3.3, t, f, "#dbe9f6")
        if i:
            arrow(ax, (i * 2.0 - 0.3, 3.87), (i * 2.0, 3.87))
    ax.text(0, 2.75, "verifier side: verify(fingerprint, target, spec) -> INTACT / TAMPERED / INCONCLUSIVE; "
            "every answer held to contract.check_output", fontsize=9)
    for i, (t, f) in enumerate(VERIFY):
        box(ax, i * 2.8, 0.9, t, f, "#e6f2df" if i < 3 else "#f6eadb")
        if i:
            arrow(ax, (i * 2.8 - 1.1, 1.47), (i * 2.8, 1.47))
    ax.plot([14.85, 14.85, 0.85], [3.25, 2.3, 2.3], color="#333", lw=1)
    arrow(ax, (0.85, 2.3), (0.85, 2.05))
    ax.text(6.2, 2.36, ".vpf file (signed)", fontsize=8, style="italic")
    ax.text(0, 0.1, "configs: dataclass defaults -> --config FILE.toml -> flags (configs.py); errors: "
            "errors.VeriprintError -> exit 2; secrets: redact.py; attacks: tamper/ (registry)", fontsize=8)
    out = Path(__file__).resolve().parents[1] / "docs" / "design" / "architecture.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
