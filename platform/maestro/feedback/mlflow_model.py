"""Motif's caption reward model as an MLflow pyfunc model "from code".

This file is not imported by Maestro: `log_reward_model` (`stages.py`) logs it with the
model, and MLflow runs it to load the model, so nothing is pickled. The weights are the
`RewardModel.to_bytes` file (loaded with `torch.load(weights_only=True)`). `predict` takes
captions and returns their normalised rewards, as the learner uses them:

    model = mlflow.pyfunc.load_model("models:/<model id>")
    model.predict(["You kill the newt!", "It's solid stone."])
"""

from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class CaptionRewardModel(PythonModel):
    """Captions -> normalised rewards."""

    def load_context(self, context):
        from maestro.feedback.reward_model import RewardModel

        data = Path(context.artifacts["reward_model"]).read_bytes()
        self.model = RewardModel.from_bytes(data)

    def predict(self, model_input: list[str], params=None) -> list[float]:
        return self.model.normalised(list(model_input)).tolist()


mlflow.models.set_model(CaptionRewardModel())
