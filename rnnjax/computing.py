"""How a run computes, beside what it computes: the kernel that trains, the platform, the device count, the
float32 matmuls' precision (``HOW``), kept in every checkpoint's meta. A resume compares them with its own
(``computed_by``, ``changed``): another is the same math rounded otherwise, not the unbroken run's bits,
and the resume says so, as does every later one (``SINCE``, ``otherwise_since``). Older metas say less,
and are compared for what they say.
"""

from __future__ import annotations

from rnnjax.config import Config

# Saved in every meta since they were added (Plan.computing), num_devices in every one.
HOW = ("kernel", "platform", "num_devices", "matmul_precision")
SINCE = "otherwise_since"       # the step after which a resume computed otherwise (changed), kept on


def computed_by(meta: dict) -> dict:
    """How the run of a checkpoint's (well-formed) ``meta`` computed, as ``HOW``'s keys, ``None`` for what it
    does not say: older metas lack the kernel (then the one its config forced, unknown for ``auto``), the
    platform and the effective matmul precision (the one its config set; its "default" was the backend's,
    or the environment's)."""
    config = Config.from_json(meta["config"])
    forced = {k: None if getattr(config, k) in ("auto", "default") else getattr(config, k)
              for k in ("kernel", "matmul_precision")}
    return {"kernel": meta.get("kernel", forced["kernel"]), "platform": meta.get("platform"),
            "num_devices": meta.get("num_devices"),
            "matmul_precision": meta.get("matmul_precision", forced["matmul_precision"]),
            SINCE: meta.get(SINCE)}


def changed(before: dict, now: dict, step: int) -> str:
    """How a run resumed at ``step`` computes otherwise than it did (``computed_by``'s ``before``, ``now``
    complete), or has since an earlier resume (``SINCE``), in a clause; '' if alike as far as ``before``
    says. Another kernel, device count, platform or matmul precision is the same math rounded otherwise:
    not the unbroken run's bits (dropout's masks too: ``rnnjax.model.RowDropout``)."""
    was, goes = [], []
    if before["kernel"] not in (None, now["kernel"]):
        was.append(f"with the {before['kernel']} kernel")
        goes.append(f"with {now['kernel']}")
    if any(before[k] not in (None, now[k]) for k in ("platform", "num_devices")):
        said = [str(x) for x in (before["num_devices"], (before["platform"] or "").upper()) if x]
        was.append(f"on {' '.join(said)} device(s)")
        goes.append(f"on {now['num_devices']} {now['platform'].upper()} device(s)")
    # A CPU's float32 matmuls are float32 at every precision (rnnjax.precision.describe).
    if before["matmul_precision"] not in (None, now["matmul_precision"]) and now["platform"] != "cpu":
        was.append(f"at {before['matmul_precision']} matmul precision")
        goes.append(f"at {now['matmul_precision']}")
    if not was and before.get(SINCE) is None:
        return ""
    if not was:             # an earlier resume's change, said by every later one
        return (f"computed otherwise since step {before[SINCE]} (a resume changed its kernel, devices or "
                "matmul precision): results may differ from an unbroken run's at float round-off")
    return (f"trained {' '.join(was)} until step {step}, continued {' '.join(goes)}: results may differ from "
            "an unbroken run's at float round-off")


def otherwise_since(before: dict | None, now: dict, step: int | None) -> dict:
    """``{SINCE: the first step after which the run computed otherwise}`` for the metas of a run resumed at
    ``step`` (``changed``), kept by every later resume; ``{}`` for a run that has not."""
    if before is None:
        return {}
    if before.get(SINCE) is not None:
        return {SINCE: before[SINCE]}
    return {SINCE: step} if changed(before, now, step) else {}
