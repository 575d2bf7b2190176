"""Rewards learned from language-model feedback on NetHack, shared by Motif and MaestroMotif:
collection of captioned games (`collect`), caption pairs (`pairs`), the annotator pool
(`annotation`), the preference store (`preferences`), the caption reward model and its
training (`reward_model`, `reward_training`, `mlflow_model`), the intrinsic reward and its
learner connector (`intrinsic`, `intrinsic_connector`) and the prepare stages built from them
(`stages`). What each method does with them: `docs/methods/motif.md`,
`docs/methods/maestromotif.md`.
"""

import maestro.rl  # noqa: F401  (first: settles Ray's auth mode before RLlib is imported)
