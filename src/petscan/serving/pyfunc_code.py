"""The file MLflow logs as the model's code ("models from code"; see `petscan.serving.pyfunc`).

MLflow runs it when the model is loaded; it needs the `petscan` package installed.
"""

from mlflow.models import set_model

from petscan.serving.pyfunc import PetscanKerasModel

set_model(PetscanKerasModel())
