"""qtd as a library in your own torchrun script (the README: "Use it in your own training loop").

- :class:`Decentralized`: QuanTimed-DSGD (and Q-DSGD, DSGD, all-reduce SGD) around your model, with a
  deadline-bounded iterator over your own DataLoader and the consensus step after your optimizer's step.
- :class:`TopKAMSGrad`: parameter-server mode (TopK / Block-Sign with error feedback, replicated AMSGrad) as a
  ``torch.optim.Optimizer``.
- ``Decentralized.save_model``: the network-average model as ``model.pt``.
"""

from .decentralized import BUFFER_MODES, Decentralized
from .optimizer import COMPRESSORS, TopKAMSGrad
from .round import Round

__all__ = ["BUFFER_MODES", "COMPRESSORS", "Decentralized", "Round", "TopKAMSGrad"]
