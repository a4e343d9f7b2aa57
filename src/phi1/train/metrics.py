"""Training metrics: MFU against a per-GPU peak table, a JSONL log, TensorBoard, a loss plot."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from phi1.errors import Phi1Error
from phi1.utils.io import JsonlAppender, atomic_write, read_jsonl, write_jsonl
from phi1.utils.safety import describe_oserror

# Dense bf16 tensor-core peak FLOP/s per GPU, from the vendors' datasheets (no sparsity).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("A6000", 155e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),
)


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of one device, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        # peak allocated by tensors, peak reserved by the caching allocator (what the GPU really lost),
        # and the device's total: headroom = total - reserved peak
        return {"mem_alloc_gb": torch.cuda.memory_allocated(device) / 2**30,
                "mem_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem_reserved_peak_gb": torch.cuda.max_memory_reserved(device) / 2**30,
                "mem_total_gb": torch.cuda.get_device_properties(device).total_memory / 2**30}
    try:
        import resource

        return {"mem_rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except ImportError:  # pragma: no cover - non-POSIX
        return {}


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when installed); only rank 0 makes one."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        try:
            if resume_step is not None and self.path.exists():
                # Records past the checkpoint came from the interrupted attempt; they are redone.
                keep = [r for r in read_jsonl(self.path, strict=False) if r.get("step", 0) <= resume_step]
                write_jsonl(self.path, keep)
            elif resume_step is None and self.path.exists():
                self.path.unlink()
            self.out = JsonlAppender(self.path, sync=False)
        except OSError as exc:
            raise self._error(exc) from None
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:
            pass

    def _error(self, exc: OSError, path: Path | None = None) -> Phi1Error:
        return Phi1Error(f"{path or self.path}: cannot write training metrics: {describe_oserror(exc)}; "
                         "the checkpoints are intact: rerun the same command to resume")

    def write(self, record: dict) -> None:
        try:
            self.out.write(record)
        except OSError as exc:
            raise self._error(exc) from None
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.out.close()
        if self.tb is not None:
            self.tb.close()

    def plot(self) -> Path | None:
        """loss.png: train and validation loss against step (matplotlib Agg)."""
        try:
            import logging

            import matplotlib

            matplotlib.use("Agg")
            logging.getLogger("matplotlib").setLevel(logging.WARNING)  # --debug would dump font scoring
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        train, val = [], []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "loss" in r:
                    train.append((r["step"], r["loss"]))
                if "val_loss" in r:
                    val.append((r["step"], r["val_loss"]))
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train), label="train", lw=1)
        if val:
            ax.plot(*zip(*val), "o-", label="val", lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.run_dir.name)
        ax.grid(alpha=0.3)
        ax.legend()
        out = self.run_dir / "loss.png"
        try:
            with atomic_write(out, "wb") as fh:
                fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
        except OSError as exc:
            raise self._error(exc, out) from None
        finally:
            plt.close(fig)
        return out
