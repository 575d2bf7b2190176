"""RLlib glue: the NetHack agent (`nethack_module`), Motif's intrinsic reward as a learner
connector (`intrinsic_connector`) and the training loop (`train`).

Ray reads `RAY_AUTH_MODE` once, when it is first imported, and these modules import RLlib
(hence Ray) at import time; so the mode is settled here first, as `init_ray` does, or a
later `init_ray` would start a token-authenticated cluster this process cannot talk to.
"""

import os

from maestro.runtime import auth_mode

os.environ["RAY_AUTH_MODE"] = auth_mode()
