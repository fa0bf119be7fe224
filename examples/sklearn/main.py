"""Model serving: a logistic regression trained on synthetic data at import time."""
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

_rng = np.random.default_rng(42)
_X = pd.DataFrame(_rng.normal(size=(2000, 4)), columns=["a", "b", "c", "d"])
_y = (_X["a"] + 2 * _X["b"] - _X["c"] + 0.1 * _rng.normal(size=len(_X)) > 0).astype(int)
MODEL = LogisticRegression().fit(_X, _y)


def handler(event, context):
    rows = event.get("features") or [[0.5, 1.0, -0.2, 0.0]]
    frame = pd.DataFrame(rows, columns=["a", "b", "c", "d"])
    proba = MODEL.predict_proba(frame)[:, 1]
    return {"predictions": [int(p > 0.5) for p in proba], "probabilities": [round(float(p), 6) for p in proba]}
