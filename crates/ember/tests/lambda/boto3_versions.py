"""Published versions, aliases and layers through boto3, as a user coming from Lambda calls
them. Run by e2e_lambda.rs: boto3_versions.py URL SANDBOXED (1: the node runs the sandbox and
takes function snapshots, so a version's is taken at publish and layers are mounted at
/opt). Exits non-zero on the first difference."""

import base64
import io
import json
import sys
import time
import urllib.request
import zipfile

import boto3
from botocore.config import Config

url, sandboxed = sys.argv[1], sys.argv[2] == "1"
snapshots = sandboxed
lam = boto3.client(
    "lambda",
    endpoint_url=url,
    region_name="us-east-1",
    aws_access_key_id="any",
    aws_secret_access_key="any",
    config=Config(retries={"max_attempts": 0}, read_timeout=120),
)
ROLE = "arn:aws:iam::000000000000:role/r"
F = "ver-fn"


def arn_of(name):
    return "arn:aws:lambda:us-east-1:000000000000:function:" + name


def code(v):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(
            zipfile.ZipInfo("lambda_function.py", date_time=(2024, 1, 1, 0, 0, 0)),
            f"""
import os
def lambda_handler(event, context):
    return {{"v": {v}, "version": context.function_version,
            "arn": context.invoked_function_arn, "name": context.function_name,
            "env": os.environ["AWS_LAMBDA_FUNCTION_VERSION"],
            "stream": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
            "init": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
            "x": os.environ.get("X")}}
""",
        )
    return buf.getvalue()


def error_code(fn, **kw):
    try:
        fn(**kw)
    except lam.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__}({kw}) did not fail")


def restarted(name, phase):
    """Stops `name`'s instances and invokes it until a start's Ember-Timing has `phase`
    (`restore`: restored from its function snapshot; `fork`: forked from that snapshot's
    template, made after the first restore). Returns the result."""
    for _ in range(100):
        stop = urllib.request.Request(url + f"/v1/functions/{name}/instances", method="DELETE")
        urllib.request.urlopen(stop).read()
        r = lam.invoke(FunctionName=name, Payload=b"{}")
        timing = r["ResponseMetadata"]["HTTPHeaders"].get("ember-timing", "")
        out = json.loads(r["Payload"].read())
        if f"{phase};" in timing and "FunctionError" not in r:
            return out
        time.sleep(0.2)
    raise AssertionError(f"no start of {name} with {phase}: {timing}")


def invoke(qualifier=None, name=F):
    kw = {"FunctionName": name, "Payload": b"{}"}
    if qualifier:
        kw["Qualifier"] = qualifier
    r = lam.invoke(**kw)
    assert "FunctionError" not in r, r
    start = r["ResponseMetadata"]["HTTPHeaders"].get("ember-start")
    return json.loads(r["Payload"].read()), r["ExecutedVersion"], start


# CreateFunction with Publish: $LATEST and version 1.
made = lam.create_function(
    FunctionName=F, Runtime="python3.11", Role=ROLE, Handler="lambda_function.lambda_handler",
    Code={"ZipFile": code(1)}, Publish=True,
    SnapStart={"ApplyOn": "PublishedVersions"},
)
assert made["Version"] == "1" and made["FunctionArn"] == arn_of(F + ":1"), made
assert made["FunctionName"] == F, made
# A version is Pending while its snapshot is taken, as SnapStart's: boto3's waiter.
lam.get_waiter("published_version_active").wait(
    FunctionName=F, Qualifier="1", WaiterConfig={"Delay": 1, "MaxAttempts": 120}
)
v1 = lam.get_function_configuration(FunctionName=F, Qualifier="1")
assert v1["State"] == "Active" and v1["Version"] == "1", v1
if snapshots:
    assert v1["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}, v1
    listed = json.load(urllib.request.urlopen(url + "/v1/snapshots"))["snapshots"]
    assert any(s["function"] == F + ":1" for s in listed), listed
latest = lam.get_function(FunctionName=F)["Configuration"]
assert latest["Version"] == "$LATEST" and latest["FunctionArn"] == arn_of(F), latest

# Invoking a version: its code, its name in the context and environment; its first start
# restores the snapshot taken at publish.
out, executed, start = invoke("1")
assert executed == "1", executed
assert out["v"] == 1 and out["version"] == "1" and out["env"] == "1", out
assert out["name"] == F and out["arn"] == arn_of(F + ":1"), out
assert "/[1]" in out["stream"], out
if snapshots:
    assert start == "function-snapshot" and out["init"] == "snap-start", (start, out)
# By ARN, qualified in the name.
assert invoke(name=arn_of(F + ":1"))[1] == "1"
tail = base64.b64decode(lam.invoke(FunctionName=F, Qualifier="1", LogType="Tail")["LogResult"])
assert b" Version: 1\n" in tail, tail

# Nothing changed: publishing again gives the same version (as Lambda).
assert lam.publish_version(FunctionName=F)["Version"] == "1"

# UpdateFunctionCode with Publish: version 2; version 1 keeps its code.
r = lam.update_function_code(FunctionName=F, ZipFile=code(2), Publish=True)
assert r["Version"] == "2", r
lam.get_waiter("published_version_active").wait(
    FunctionName=F, Qualifier="2", WaiterConfig={"Delay": 1, "MaxAttempts": 120}
)
assert invoke("1")[0]["v"] == 1 and invoke("2")[0]["v"] == 2 and invoke()[0]["v"] == 2
assert invoke()[1] == "$LATEST"

# A version is immutable: configuration updates take the function.
assert error_code(
    lam.update_function_configuration, FunctionName=F + ":1", Timeout=5
) == ("InvalidParameterValueException", 400)
lam.update_function_configuration(FunctionName=F, Environment={"Variables": {"X": "y"}})
lam.get_waiter("function_updated_v2").wait(FunctionName=F)
assert invoke()[0]["x"] == "y" and invoke("2")[0]["x"] is None

# PublishVersion's checks: a stale RevisionId, another code's CodeSha256.
assert error_code(
    lam.publish_version, FunctionName=F, RevisionId="1-stale"
) == ("PreconditionFailedException", 412)
assert error_code(
    lam.publish_version, FunctionName=F, CodeSha256="AAAA"
) == ("InvalidParameterValueException", 400)
cur = lam.get_function_configuration(FunctionName=F)
v3 = lam.publish_version(
    FunctionName=F, Description="with X", RevisionId=cur["RevisionId"],
    CodeSha256=cur["CodeSha256"],
)
assert v3["Version"] == "3" and v3["Description"] == "with X", v3

# ListVersionsByFunction: $LATEST first, pages.
seen, marker = [], None
while True:
    kw = {"FunctionName": F, "MaxItems": 2}
    if marker:
        kw["Marker"] = marker
    page = lam.list_versions_by_function(**kw)
    seen += [v["Version"] for v in page["Versions"]]
    marker = page.get("NextMarker")
    if not marker:
        break
assert seen == ["$LATEST", "1", "2", "3"], seen
# ListFunctions shows $LATEST only, unless asked for every version.
names = [f["FunctionArn"] for f in lam.list_functions()["Functions"]]
assert arn_of(F) in names and arn_of(F + ":1") not in names, names
names = [f["FunctionArn"] for f in lam.list_functions(FunctionVersion="ALL")["Functions"]]
assert arn_of(F + ":1") in names and arn_of(F + ":3") in names, names

# Aliases: invoked by name or ARN, GetFunction through one shows its version.
a = lam.create_alias(FunctionName=F, Name="live", FunctionVersion="1", Description="prod")
assert a["AliasArn"] == arn_of(F + ":live") and a["FunctionVersion"] == "1", a
assert error_code(
    lam.create_alias, FunctionName=F, Name="live", FunctionVersion="2"
) == ("ResourceConflictException", 409)
assert invoke("live")[1] == "1"
assert invoke(name=arn_of(F + ":live"))[0]["v"] == 1
assert lam.get_function(FunctionName=F, Qualifier="live")["Configuration"]["Version"] == "1"
assert lam.get_alias(FunctionName=F, Name="live")["Description"] == "prod"

# Weighted routing between two published versions.
a = lam.update_alias(
    FunctionName=F, Name="live", RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}}
)
assert a["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.5}}, a
ran = [invoke("live")[1] for _ in range(80)]
assert 10 <= ran.count("2") <= 70 and ran.count("1") + ran.count("2") == 80, ran
for bad in [{"$LATEST": 0.5}, {"2": 1.5}, {"2": 0.1, "3": 0.1}, {"1": 0.2}]:
    assert error_code(
        lam.update_alias, FunctionName=F, Name="live",
        RoutingConfig={"AdditionalVersionWeights": bad},
    ) == ("InvalidParameterValueException", 400), bad
assert error_code(
    lam.update_alias, FunctionName=F, Name="live", FunctionVersion="9"
)[1] == 404
assert error_code(
    lam.update_alias, FunctionName=F, Name="live", FunctionVersion="2", RevisionId="0-live"
) == ("PreconditionFailedException", 412)
rev = lam.get_alias(FunctionName=F, Name="live")["RevisionId"]
a = lam.update_alias(
    FunctionName=F, Name="live", FunctionVersion="3", RevisionId=rev,
    RoutingConfig={"AdditionalVersionWeights": {}},
)
assert a["FunctionVersion"] == "3" and "RoutingConfig" not in a, a
assert invoke("live")[0]["x"] == "y"
lam.create_alias(FunctionName=F, Name="edge", FunctionVersion="$LATEST")
assert [x["Name"] for x in lam.list_aliases(FunctionName=F)["Aliases"]] == ["edge", "live"]
assert [x["Name"] for x in lam.list_aliases(FunctionName=F, FunctionVersion="3")["Aliases"]] == [
    "live"
]
assert error_code(lam.create_alias, FunctionName=F, Name="42", FunctionVersion="1")[1] == 400
assert error_code(lam.get_alias, FunctionName=F, Name="nope") == (
    "ResourceNotFoundException", 404
)
assert error_code(lam.invoke, FunctionName=F, Qualifier="nope")[1] == 404
assert error_code(lam.invoke, FunctionName=F, Qualifier="17")[1] == 404

# Deleting: a version an alias names is refused; $LATEST only with the function.
assert error_code(lam.delete_function, FunctionName=F, Qualifier="3") == (
    "ResourceConflictException", 409
)
assert error_code(lam.delete_function, FunctionName=F, Qualifier="$LATEST")[1] == 400
lam.delete_function(FunctionName=F, Qualifier="2")
assert error_code(lam.invoke, FunctionName=F, Qualifier="2")[1] == 404
lam.delete_alias(FunctionName=F, Name="edge")
assert error_code(lam.delete_alias, FunctionName=F, Name="edge")[1] == 404
# Numbers are never used twice.
lam.update_function_code(FunctionName=F, ZipFile=code(4))
lam.get_waiter("function_updated_v2").wait(FunctionName=F)
assert lam.publish_version(FunctionName=F)["Version"] == "4"

# The function goes with its versions and aliases; created again, it counts from 1.
lam.delete_function(FunctionName=F)
assert error_code(lam.get_function, FunctionName=F, Qualifier="1")[1] == 404
lam.create_function(
    FunctionName=F, Runtime="python3.11", Role=ROLE, Handler="lambda_function.lambda_handler",
    Code={"ZipFile": code(5)},
)
assert error_code(lam.get_alias, FunctionName=F, Name="live")[1] == 404
assert lam.publish_version(FunctionName=F)["Version"] == "1"
lam.delete_function(FunctionName=F)

# Provisioned concurrency: instances of a version (or of an alias's) kept started and ready,
# so that a burst finds them warm.
lam.create_function(
    FunctionName="prov-fn", Runtime="python3.11", Role=ROLE,
    Handler="lambda_function.lambda_handler", Code={"ZipFile": code(7)}, Publish=True,
)
lam.get_waiter("published_version_active").wait(
    FunctionName="prov-fn", Qualifier="1", WaiterConfig={"Delay": 1, "MaxAttempts": 120}
)
assert error_code(
    lam.put_provisioned_concurrency_config, FunctionName="prov-fn", Qualifier="$LATEST",
    ProvisionedConcurrentExecutions=2,
)[1] == 400
lam.create_alias(FunctionName="prov-fn", Name="edge", FunctionVersion="$LATEST")
assert error_code(
    lam.put_provisioned_concurrency_config, FunctionName="prov-fn", Qualifier="edge",
    ProvisionedConcurrentExecutions=2,
)[1] == 400
lam.create_alias(FunctionName="prov-fn", Name="live", FunctionVersion="1")
put = lam.put_provisioned_concurrency_config(
    FunctionName="prov-fn", Qualifier="live", ProvisionedConcurrentExecutions=2)
assert put["RequestedProvisionedConcurrentExecutions"] == 2, put
for _ in range(150):
    got = lam.get_provisioned_concurrency_config(FunctionName="prov-fn", Qualifier="1")
    if got["Status"] == "READY":
        break
    time.sleep(0.2)
assert got["Status"] == "READY" and got["AvailableProvisionedConcurrentExecutions"] == 2, got
time.sleep(3)  # past the daemon's keep-alive (2 s in this test): they are kept regardless
import concurrent.futures
with concurrent.futures.ThreadPoolExecutor(2) as pool:
    starts = list(pool.map(lambda _: invoke("live", name="prov-fn")[2], range(2)))
assert starts == ["warm", "warm"], starts
listed = lam.list_provisioned_concurrency_configs(FunctionName="prov-fn")
assert [c["FunctionArn"] for c in listed["ProvisionedConcurrencyConfigs"]] == [
    arn_of("prov-fn:1")], listed
assert error_code(
    lam.put_provisioned_concurrency_config, FunctionName="prov-fn", Qualifier="1",
    ProvisionedConcurrentExecutions=5000,
) == ("InvalidParameterValueException", 400)
lam.delete_provisioned_concurrency_config(FunctionName="prov-fn", Qualifier="live")
assert error_code(
    lam.get_provisioned_concurrency_config, FunctionName="prov-fn", Qualifier="1"
) == ("ProvisionedConcurrencyConfigNotFoundException", 404)
lam.delete_function(FunctionName="prov-fn")

# Layers: zips published as numbered versions, merged in order at /opt (read-only); their
# Python packages on sys.path after the function's own code, as on Lambda.
def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            executable = name.startswith("bin/") or name == "bootstrap"
            info.external_attr = (0o755 if executable else 0o644) << 16
            z.writestr(info, text)
    return buf.getvalue()


LAYER = "arn:aws:lambda:us-east-1:000000000000:layer:"
one = lam.publish_layer_version(
    LayerName="deps", Description="one", CompatibleRuntimes=["python3.11"],
    Content={"ZipFile": zipped({"python/greet.py": "WHO = 'one'\n",
                                "bin/tool": "#!/bin/sh\necho tool from a layer\n"})},
)
assert one["Version"] == 1 and one["LayerVersionArn"] == LAYER + "deps:1", one
assert one["LayerArn"] == LAYER + "deps" and one["Content"]["CodeSize"] > 0, one
two = lam.publish_layer_version(
    LayerName="over", Content={"ZipFile": zipped({"python/greet.py": "WHO = 'two'\n",
                                                  "data.txt": "from two"})},
)
LAYERED = """
import os, subprocess, sys
def lambda_handler(event, context):
    import greet
    try:
        open("/opt/mine", "w")
        wrote = True
    except OSError:
        wrote = False
    data = open("/opt/data.txt").read() if os.path.exists("/opt/data.txt") else None
    tool = subprocess.run(["tool"], capture_output=True, text=True).stdout.strip() \
        if os.path.exists("/opt/bin/tool") else None
    return {"who": greet.WHO, "data": data, "path": sys.path[1:3], "wrote": wrote,
            "tool": tool}
"""
both = [one["LayerVersionArn"], two["LayerVersionArn"]]
if not sandboxed:
    assert error_code(
        lam.create_function, FunctionName="layered", Runtime="python3.11", Role=ROLE,
        Handler="lambda_function.lambda_handler",
        Code={"ZipFile": zipped({"lambda_function.py": LAYERED})}, Layers=both,
    ) == ("InvalidParameterValueException", 400)
else:
    lam.create_function(
        FunctionName="layered", Runtime="python3.11", Role=ROLE,
        Handler="lambda_function.lambda_handler",
        Code={"ZipFile": zipped({"lambda_function.py": LAYERED})}, Layers=both,
    )
    out = invoke(name="layered")[0]
    assert out["who"] == "two" and out["data"] == "from two", out
    assert out["path"] == ["/opt/python/lib/python3.11/site-packages", "/opt/python"], out
    assert out["wrote"] is False and out["tool"] == "tool from a layer", out
    # The function's snapshot (taken after that first start) restores with /opt bound
    # again, and so do the instances forked from its template.
    assert restarted("layered", "restore") == out
    assert restarted("layered", "fork") == out
    shown = lam.get_function_configuration(FunctionName="layered")["Layers"]
    assert [x["Arn"] for x in shown] == both and all(x["CodeSize"] > 0 for x in shown), shown
    # Another list of layers, another /opt.
    lam.update_function_configuration(FunctionName="layered", Layers=[one["LayerVersionArn"]])
    lam.get_waiter("function_updated_v2").wait(FunctionName="layered")
    out = invoke(name="layered")[0]
    assert out["who"] == "one" and out["data"] is None, out
    # A deleted layer version: the functions using it keep their copy.
    lam.delete_layer_version(LayerName="deps", VersionNumber=1)
    lam.update_function_configuration(FunctionName="layered", Description="still layered")
    lam.get_waiter("function_updated_v2").wait(FunctionName="layered")
    assert invoke(name="layered")[0]["who"] == "one"
    lam.delete_function(FunctionName="layered")
    # A custom runtime's bootstrap from a layer, as Lambda runs /opt/bootstrap when the
    # function's code has none.
    boot = '''#!/usr/bin/python3
import http.client, json, os
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
conn = http.client.HTTPConnection(host, int(port))
while True:
    conn.request("GET", "/2018-06-01/runtime/invocation/next")
    r = conn.getresponse()
    r.read()
    rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
    out = json.dumps({"from": "a layer", "handler": os.environ["_HANDLER"]})
    conn.request("POST", f"/2018-06-01/runtime/invocation/{rid}/response", body=out)
    conn.getresponse().read()
'''
    rt = lam.publish_layer_version(LayerName="runtime", Content={"ZipFile": zipped({"bootstrap": boot})})
    lam.create_function(
        FunctionName="layer-runtime", Runtime="provided.al2023", Role=ROLE, Handler="x.y",
        Code={"ZipFile": zipped({"notes.txt": "no bootstrap here"})},
        Layers=[rt["LayerVersionArn"]],
    )
    assert invoke(name="layer-runtime")[0] == {"from": "a layer", "handler": "x.y"}
    lam.delete_function(FunctionName="layer-runtime")
    assert error_code(
        lam.create_function, FunctionName="no-runtime", Runtime="provided.al2023", Role=ROLE,
        Handler="x.y", Code={"ZipFile": zipped({"notes.txt": "no bootstrap here"})},
    ) == ("InvalidParameterValueException", 400)
    assert error_code(lam.get_layer_version, LayerName="deps", VersionNumber=1)[1] == 404
    again = lam.publish_layer_version(LayerName="deps", Content={"ZipFile": zipped({"x": "y"})})
    assert again["Version"] == 2, again
for bad in [
    [two["LayerVersionArn"]] * 2,
    [LAYER + f"l{i}:1" for i in range(6)],
    ["arn:aws:lambda:eu-west-1:123456789012:layer:theirs:3"],
    [LAYER + "over:9"],
]:
    assert error_code(
        lam.create_function, FunctionName="bad-layers", Runtime="python3.11", Role=ROLE,
        Handler="lambda_function.lambda_handler",
        Code={"ZipFile": zipped({"lambda_function.py": LAYERED})}, Layers=bad,
    ) == ("InvalidParameterValueException", 400), bad
# EphemeralStorage: the size of the function's /tmp (512 MB unless given), however its
# instance starts.
TMP = '''
import os
def lambda_handler(event, context):
    st = os.statvfs("/tmp")
    return st.f_blocks * st.f_frsize >> 20
'''
lam.create_function(
    FunctionName="tmp-fn", Runtime="python3.11", Role=ROLE,
    Handler="lambda_function.lambda_handler", Code={"ZipFile": zipped({"lambda_function.py": TMP})},
)
conf = lam.get_function_configuration(FunctionName="tmp-fn")
assert conf["EphemeralStorage"] == {"Size": 512}, conf
if sandboxed:
    assert invoke(name="tmp-fn")[0] == 512
lam.update_function_configuration(FunctionName="tmp-fn", EphemeralStorage={"Size": 1536})
lam.get_waiter("function_updated_v2").wait(FunctionName="tmp-fn")
assert lam.get_function(FunctionName="tmp-fn")["Configuration"]["EphemeralStorage"]["Size"] == 1536
if sandboxed:
    assert invoke(name="tmp-fn")[0] == 1536
    assert restarted("tmp-fn", "restore") == 1536
    assert restarted("tmp-fn", "fork") == 1536
assert error_code(
    lam.update_function_configuration, FunctionName="tmp-fn", EphemeralStorage={"Size": 10241}
) == ("InvalidParameterValueException", 400)
lam.delete_function(FunctionName="tmp-fn")

names = [x["LayerName"] for x in lam.list_layers()["Layers"]]
assert "over" in names, names
assert [v["Version"] for v in lam.list_layer_versions(LayerName="over")["LayerVersions"]] == [1]
assert lam.get_layer_version_by_arn(Arn=two["LayerVersionArn"])["Version"] == 1
print("boto3 versions: OK")
