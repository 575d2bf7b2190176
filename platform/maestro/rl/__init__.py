"""RLlib glue for any method that trains an RLlib agent on NetHack: the algorithm config
from a spec's settings (`algorithm`), the env as RLlib's env runners make it and its
episode statistics in their metrics (`env`), checkpoints in the artifact store
(`checkpoints`), the figures read from RLlib's results (`results`), and what Motif and
MaestroMotif share: the NetHack agent (`agent`), its training loop (`training`) and its
evaluation (`evaluate`). The learners that add a learned reward are in `maestro.feedback`.

Beside RLlib, compact torch learners for continuous control that import no RLlib: TD3
(`td3`), SAC (`sac`), their shared networks (`networks`), the replay buffer (`replay`) and
the interaction loop with evaluation and checkpoints (`off_policy`); docs/architecture.md
says when a method uses which.

Ray reads `RAY_AUTH_MODE` once, when it is first imported, and these modules import RLlib
(hence Ray) at import time; so the mode is settled here first (as `init_ray` does), or a
later `init_ray` would start a token-authenticated cluster this process cannot talk to. A
module whose imports reach RLlib imports `maestro.rl` first (`maestro.feedback` and the
methods' `__init__.py` do).
"""

from maestro.runtime import settle_auth_mode

settle_auth_mode()
