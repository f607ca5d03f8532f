"""An MLServer runtime that is a dishonest provider (runs in .venv-serving).

It holds the intact model and the copy the provider would rather serve (TorchScript files),
and a routing policy of :mod:`veriprint.adversary` (imported from the checkout's ``src``).
It answers honestly until the file ``swap`` names exists, then from the served copy, except
for the rows its policy routes to the intact one: what
:class:`veriprint.adversary.Provider` does in-process, behind a real server.

model-settings.json parameters: ``src`` (the checkout's src folder), ``intact`` and
``served`` (TorchScript files), ``policy`` (a registered policy name, or "" for none),
``swap`` (the flag file).
"""

import os
import sys

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class AdversaryRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters.model_extra or {}
        sys.path.insert(0, str(params["src"]))
        from veriprint.adversary import Provider, make_policy

        torch.set_num_threads(1)
        intact = torch.jit.load(str(params["intact"])).eval()
        served = torch.jit.load(str(params["served"])).eval()
        name = str(params.get("policy") or "")
        self._provider = Provider(intact, served, make_policy(name) if name else None, swapped=False)
        self._swap = str(params["swap"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        from veriprint.targets import QueryBatch

        if not self._provider.swapped and os.path.exists(self._swap):
            self._provider.swap()
        x = np.ascontiguousarray(NumpyCodec.decode_input(payload.inputs[0]), dtype=np.float32)
        z = self._provider.query(QueryBatch(x))
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("logits", np.asarray(z, np.float32))])
