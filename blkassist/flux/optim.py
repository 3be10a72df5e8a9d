"""The optimiser and learning-rate schedule a recipe asks for.

AdamW 8-bit comes from bitsandbytes. Where its kernels cannot run on the training device
the nearest equivalent (torch's AdamW, same hyper-parameters, fp32 states) is used and
the reason is returned, for the log and the model card.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _bitsandbytes_problem(device: torch.device) -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot step on `device` (None: it can)."""
    try:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional-kernel chatter
        import bitsandbytes as bnb
    except Exception as error:  # ImportError, or a broken native library
        return f"bitsandbytes does not import ({type(error).__name__}: {error})"
    try:
        probe = torch.nn.Parameter(torch.ones(4096, device=device))
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as error:
        return f"bitsandbytes' 8-bit AdamW cannot step on {device.type} ({error})"
    return None


def make_optimizer(params, recipe, device: str | torch.device) -> tuple[object, dict]:
    """The optimiser, and a record of what was asked and what is used (and why)."""
    device = torch.device(device)
    asked = recipe.optimizer
    record = {"asked": asked}
    if asked == "prodigy":
        from prodigyopt import Prodigy

        optimizer = Prodigy(
            params,
            lr=recipe.lr,
            betas=tuple(recipe.betas),
            weight_decay=recipe.weight_decay,
            decouple=recipe.decouple,
            use_bias_correction=recipe.use_bias_correction,
            safeguard_warmup=recipe.safeguard_warmup,
            d0=recipe.d0,
            d_coef=recipe.d_coef,
        )
        return optimizer, {**record, "used": "prodigyopt.Prodigy"}
    settings = {"lr": recipe.lr, "betas": tuple(recipe.betas), "weight_decay": recipe.weight_decay}
    if asked == "adamw8bit":
        problem = _bitsandbytes_problem(device)
        if problem is None:
            import bitsandbytes as bnb

            optimizer = bnb.optim.AdamW8bit(params, **settings)
            return optimizer, {
                **record,
                "used": "bitsandbytes.optim.AdamW8bit",
                "note": "tensors under 4096 values keep 32-bit states (bitsandbytes' "
                "min_8bit_size)",
            }
        log.warning("adamw8bit asked, torch AdamW used instead: %s", problem)
        record["fallback_reason"] = problem
    return torch.optim.AdamW(params, **settings), {**record, "used": "torch.optim.AdamW"}


def make_schedule(optimizer, recipe):
    """Per optimiser step: linear warm-up to lr, then constant, cosine decay to 0, or
    polynomial decay (power `lr_power`, to diffusers' lr_end 1e-7) at `steps` (diffusers'
    schedules)."""
    from diffusers.optimization import get_scheduler

    extra = {}
    if recipe.lr_schedule in ("cosine", "polynomial"):
        name = recipe.lr_schedule
        if name == "polynomial":
            extra["power"] = recipe.lr_power
    else:
        name = "constant_with_warmup" if recipe.warmup_steps else "constant"
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=recipe.warmup_steps,
        num_training_steps=recipe.steps,
        **extra,
    )
