"""RLlib glue for any method that trains an RLlib agent on NetHack: the algorithm config
from a spec's settings (`algorithm`), the env as RLlib's env runners make it and its
episode statistics in their metrics (`env`), checkpoints in the artifact store
(`checkpoints`) and the figures read from RLlib's results (`results`). A method's own
agent, learners and training loop live in its folder (Motif's: `methods/motif/`).

Ray reads `RAY_AUTH_MODE` once, when it is first imported, and these modules import RLlib
(hence Ray) at import time; so the mode is settled here first (as `init_ray` does), or a
later `init_ray` would start a token-authenticated cluster this process cannot talk to. A
method whose modules import RLlib at import time imports `maestro.rl` first (Motif: in
`methods/motif/__init__.py`).
"""

from maestro.runtime import settle_auth_mode

settle_auth_mode()
