"""`ember bench snap` target: imports a workload's packages, does its work once, then answers
commands on stdin. `work` answers; `fork` answers from a forked child (the physical
reference for a restore: a copy of the live process)."""
import os
import sys

os.closerange(3, 1 << 16)  # inherited descriptors would end up in the image
WORKLOAD = sys.argv[1]
if WORKLOAD == "json":
    import json

    def work():
        return json.dumps({"k": list(range(10))})

elif WORKLOAD == "numpy":
    import numpy as np

    def work():
        return str(int(np.arange(1000).sum()))

elif WORKLOAD == "sklearn":
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": [0.0, 1.0, 0.1, 0.9], "b": [1.0, 0.0, 0.9, 0.2]})
    model = LogisticRegression().fit(frame.to_numpy(), [0, 1, 0, 1])

    def work():
        return str(int(model.predict(np.array([[0.8, 0.1]]))[0]))

else:
    raise SystemExit(f"unknown workload {WORKLOAD}")

work()
os.write(1, b"ready\n")
stdin = sys.stdin.buffer
while True:
    line = stdin.readline()
    if not line:
        break
    if line == b"work\n":
        os.write(1, (work() + "\n").encode())
    elif line == b"fork\n":
        pid = os.fork()
        if pid == 0:
            os.write(1, (work() + "\n").encode())
            os._exit(0)
        os.waitpid(pid, 0)
