"""A fake FLUX provider for tests, `fluxhook simulate` and `fluxhook demo`.

It speaks BFL's native API (`/v1/...`, `x-key`) and the DeerAPI/CometAPI proxy
shape (`/flux/v1/...`, Bearer) (:mod:`submitter.simulator.bfl`), plus Replicate's
predictions API and its proxy shape (`/replicate/v1/...`; :mod:`submitter.simulator.replicate`).
It serves real PNG/JPEG results behind signed, expiring delivery URLs
(:mod:`submitter.simulator.delivery`), and sends webhook callbacks. Misbehaviour
(dropped, duplicated, reordered or badly signed callbacks, rejected submits, expired
URLs, slow downloads...) is chosen per job by matching rules against the prompt
(:class:`Faults`).

Inside, the parts share one :class:`~submitter.simulator.state.SimState` and use each
other only through public methods: faults, images < state < delivery, callbacks,
prediction < bfl, replicate < app.
"""

from submitter.simulator.app import Simulator, run_simulator
from submitter.simulator.faults import Faults
from submitter.simulator.images import jpeg_image, png_image

__all__ = ["Faults", "Simulator", "jpeg_image", "png_image", "run_simulator"]
