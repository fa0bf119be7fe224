"""FunctionBench matmul: multiply two random matrices."""
import numpy as np


def handler(event, context):
    n = int(event.get("n", 200))
    rng = np.random.default_rng(int(event.get("seed", 0)))
    a = rng.random((n, n))
    b = rng.random((n, n))
    c = a @ b
    return {"n": n, "trace": float(np.trace(c))}
