"""An exponential moving average of the adapter's weights (what ships by default)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel


class AdapterEMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.model = EMAModel(params, decay=decay)

    def step(self) -> None:
        self.model.step(self.params)

    @contextmanager
    def applied(self):
        """The averaged weights in place of the live ones, restored afterwards."""
        self.model.store(self.params)
        self.model.copy_to(self.params)
        try:
            yield
        finally:
            self.model.restore(self.params)

    def state_dict(self) -> dict:
        state = self.model.state_dict()
        state["shadow_params"] = [p.detach().cpu().clone() for p in state["shadow_params"]]
        return state

    def load_state_dict(self, state: dict, device) -> None:
        self.model.load_state_dict(state)
        self.model.to(device)
