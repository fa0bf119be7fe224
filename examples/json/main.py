"""FunctionBench json_dumps_loads: serialise and parse a generated document."""
import json
import random


def handler(event, context):
    n = int(event.get("n", 1000))
    rng = random.Random(n)
    doc = [
        {"id": i, "name": "item-%d" % i, "score": rng.random(), "tags": ["a", "b", "c"][: i % 4]}
        for i in range(n)
    ]
    text = json.dumps(doc)
    back = json.loads(text)
    return {"items": len(back), "bytes": len(text)}
