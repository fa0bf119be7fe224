"""Drives Ember's Lambda API with boto3, exactly as a user would: endpoint_url is the only
change from talking to AWS. Run by e2e_lambda.rs: boto3_conformance.py URL WORKDIR.
Exits non-zero (an AssertionError with its line) on the first difference."""

import base64
import concurrent.futures
import io
import json
import sys
import zipfile

import boto3
from botocore.config import Config

url, work = sys.argv[1], sys.argv[2]
lam = boto3.client(
    "lambda",
    endpoint_url=url,
    region_name="us-east-1",
    aws_access_key_id="any",
    aws_secret_access_key="any",
    config=Config(retries={"max_attempts": 0}, read_timeout=120),
)


def zipped(files):
    """The same files always give the same bytes: entries carry a fixed time (zipfile would
    stamp the current one, in 2-second steps, and two zips of one code made across a step
    would differ, as would their CodeSha256)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


def code(body):
    return zipped({"lambda_function.py": body})


def arn_of(name):
    return "arn:aws:lambda:us-east-1:000000000000:function:" + name


def error_code(fn, **kw):
    try:
        fn(**kw)
    except lam.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__}({kw}) did not fail")


V1 = """
import decimal, logging, os
logger = logging.getLogger()
logger.setLevel(logging.INFO)
def lambda_handler(event, context):
    print("hello from", context.function_name, context.aws_request_id)
    logger.info("logged for %s", context.aws_request_id)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"v": 1, "event": event, "greeting": os.environ.get("GREETING"),
            "memory": context.memory_limit_in_mb, "version": context.function_version,
            "arn": context.invoked_function_arn, "price": decimal.Decimal("9.90"),
            "region": os.environ.get("AWS_REGION"), "root": os.environ.get("LAMBDA_TASK_ROOT")}
"""

# Create, with Lambda's defaults where nothing is given.
made = lam.create_function(
    FunctionName="boto-fn",
    Runtime="python3.12",
    Role="arn:aws:iam::123456789012:role/lambda-role",
    Handler="lambda_function.lambda_handler",
    Code={"ZipFile": code(V1)},
    Description="made by boto3",
    Environment={"Variables": {"GREETING": "hi"}},
)
assert made["ResponseMetadata"]["HTTPStatusCode"] == 201, made
assert made["FunctionName"] == "boto-fn"
assert made["FunctionArn"].endswith(":function:boto-fn"), made
assert (made["Runtime"], made["Timeout"], made["MemorySize"]) == ("python3.12", 3, 128), made
assert made["State"] == "Active" and made["Description"] == "made by boto3"
assert made["CodeSha256"] == base64.b64encode(
    __import__("hashlib").sha256(code(V1)).digest()
).decode(), made
lam.get_waiter("function_active_v2").wait(FunctionName="boto-fn")

got = lam.get_function(FunctionName="boto-fn")
assert got["Configuration"]["Handler"] == "lambda_function.lambda_handler"
assert got["Configuration"]["Environment"]["Variables"] == {"GREETING": "hi"}
arn = got["Configuration"]["FunctionArn"]
assert lam.get_function_configuration(FunctionName=arn)["FunctionName"] == "boto-fn"
names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
assert "boto-fn" in names, names
# Pagination: one per page still reaches every function.
seen, marker = [], None
while True:
    kw = {"MaxItems": 1} | ({"Marker": marker} if marker else {})
    page = lam.list_functions(**kw)
    seen += [f["FunctionName"] for f in page["Functions"]]
    marker = page.get("NextMarker")
    if not marker:
        break
assert sorted(seen) == sorted(names), (seen, names)

# Invoke: the result, the executed version, the log tail.
r = lam.invoke(FunctionName="boto-fn", Payload=json.dumps({"a": 1}), LogType="Tail")
assert r["StatusCode"] == 200 and "FunctionError" not in r, r
raw = r["Payload"].read()
out = json.loads(raw)
root = out.pop("root")
assert root and root.startswith("/"), root
assert out == {"v": 1, "event": {"a": 1}, "greeting": "hi", "memory": "128",
               "version": "$LATEST", "arn": arn_of("boto-fn"), "price": 9.9,
               "region": "us-east-1"}, out
assert b'"price": 9.90' in raw, raw
assert r["ExecutedVersion"] == "$LATEST"
tail = base64.b64decode(r["LogResult"]).decode()
rid = r["ResponseMetadata"]["RequestId"]
assert f"START RequestId: {rid}" in tail and f"hello from boto-fn {rid}" in tail, tail
# Python's logging as Lambda's runtime sets it up: [LEVEL] time request-id message.
assert any(
    line.startswith("[INFO]\t") and line.endswith(f"\t{rid}\tlogged for {rid}")
    for line in tail.splitlines()
), tail
assert f"REPORT RequestId: {rid}" in tail and "Memory Size: 128 MB" in tail, tail
# An ARN and $LATEST name the same function; an empty payload is {}.
r = lam.invoke(FunctionName=arn, Qualifier="$LATEST")
assert json.loads(r["Payload"].read())["event"] == {}

# A handler's exception: 200, X-Amz-Function-Error, Lambda's error document.
r = lam.invoke(FunctionName="boto-fn", Payload=b'{"fail": true}')
assert r["StatusCode"] == 200 and r["FunctionError"] == "Unhandled", r
doc = json.loads(r["Payload"].read())
assert doc["errorType"] == "ValueError" and doc["errorMessage"] == "asked to fail", doc
# Lambda's stackTrace: the function's frames only, one string each.
assert len(doc["stackTrace"]) == 1, doc
assert doc["stackTrace"][0].startswith('  File "') and "lambda_function.py" in doc["stackTrace"][0]
assert 'raise ValueError("asked to fail")' in doc["stackTrace"][0], doc

# A module that cannot be imported: Lambda's init error, its text in the log tail.
lam.create_function(
    FunctionName="broken-fn", Runtime="python3.12", Role="r",
    Handler="lambda_function.lambda_handler", Code={"ZipFile": code("import not_there\n")},
)
lam.get_waiter("function_active_v2").wait(FunctionName="broken-fn")
r = lam.invoke(FunctionName="broken-fn", LogType="Tail")
assert r["FunctionError"] == "Unhandled", r
doc = json.loads(r["Payload"].read())
assert doc["errorType"] == "Runtime.ImportModuleError", doc
assert doc["errorMessage"] == "Unable to import module 'lambda_function': No module named 'not_there'"
tail = base64.b64decode(r["LogResult"]).decode()
assert "[ERROR] Runtime.ImportModuleError: Unable to import module" in tail, tail
lam.delete_function(FunctionName="broken-fn")

# InvokeWithResponseStream: the result in Lambda's event stream, then InvokeComplete with the
# log tail or the function's error.
r = lam.invoke_with_response_stream(FunctionName="boto-fn", Payload=b'{"s": 1}', LogType="Tail")
assert r["StatusCode"] == 200 and r["ExecutedVersion"] == "$LATEST", r
chunks, done = b"", None
for ev in r["EventStream"]:
    if "PayloadChunk" in ev:
        chunks += ev["PayloadChunk"]["Payload"]
    if "InvokeComplete" in ev:
        done = ev["InvokeComplete"]
assert json.loads(chunks)["event"] == {"s": 1}, chunks
assert "START RequestId" in base64.b64decode(done["LogResult"]).decode(), done
events = list(lam.invoke_with_response_stream(
    FunctionName="boto-fn", Payload=b'{"fail": true}')["EventStream"])
done = events[-1]["InvokeComplete"]
assert done["ErrorCode"] == "ValueError", done
assert json.loads(done["ErrorDetails"])["errorMessage"] == "asked to fail", done

# DryRun and Event.
r = lam.invoke(FunctionName="boto-fn", InvocationType="DryRun")
assert r["StatusCode"] == 204, r
r = lam.invoke(FunctionName="boto-fn", InvocationType="Event", Payload=b'{"async": 1}')
assert r["StatusCode"] == 202, r

# Updates.
V2 = V1.replace('"v": 1', '"v": 2')
u = lam.update_function_code(FunctionName="boto-fn", ZipFile=code(V2))
assert u["LastUpdateStatus"] == "Successful", u
lam.get_waiter("function_updated_v2").wait(FunctionName="boto-fn")
u = lam.update_function_configuration(
    FunctionName="boto-fn", Timeout=10, MemorySize=256,
    Environment={"Variables": {"GREETING": "hello"}},
)
assert (u["Timeout"], u["MemorySize"]) == (10, 256), u
out = json.loads(lam.invoke(FunctionName="boto-fn", Payload=b"{}")["Payload"].read())
assert (out["v"], out["greeting"], out["memory"]) == (2, "hello", "256"), out

# Lambda's errors for what is wrong.
assert error_code(lam.get_function, FunctionName="nope") == ("ResourceNotFoundException", 404)
assert error_code(lam.invoke, FunctionName="nope") == ("ResourceNotFoundException", 404)
assert error_code(lam.invoke, FunctionName="boto-fn", Qualifier="99") == (
    "ResourceNotFoundException", 404)
assert error_code(
    lam.create_function, FunctionName="boto-fn", Runtime="python3.12", Role="r",
    Handler="lambda_function.lambda_handler", Code={"ZipFile": code(V1)},
) == ("ResourceConflictException", 409)
assert error_code(
    lam.create_function, FunctionName="ruby-fn", Runtime="ruby3.3", Role="r",
    Handler="index.handler", Code={"ZipFile": code(V1)},
) == ("InvalidParameterValueException", 400)
assert error_code(
    lam.create_function, FunctionName="bad-zip", Runtime="python3.12", Role="r",
    Handler="lambda_function.lambda_handler", Code={"ZipFile": b"this is not a zip"},
) == ("InvalidParameterValueException", 400)
assert error_code(
    lam.create_function, FunctionName="s3-fn", Runtime="python3.12", Role="r",
    Handler="lambda_function.lambda_handler", Code={"S3Bucket": "bucket", "S3Key": "key.zip"},
) == ("InvalidParameterValueException", 400)
assert error_code(
    lam.create_function, FunctionName="bad-handler", Runtime="python3.12", Role="r",
    Handler="no-dots", Code={"ZipFile": code(V1)},
) == ("InvalidParameterValueException", 400)
assert error_code(
    lam.create_function, FunctionName="not.a.name", Runtime="python3.12", Role="r",
    Handler="lambda_function.lambda_handler", Code={"ZipFile": code(V1)},
) == ("InvalidParameterValueException", 400)
# Lambda's names: mixed case, '_', 64 characters (as CloudFormation makes them).
long_name = "Stack_Fn-" + "A" * 55
lam.create_function(
    FunctionName=long_name, Runtime="python3.12", Role="r",
    Handler="lambda_function.lambda_handler", Code={"ZipFile": code(V1)},
)
r = lam.invoke(FunctionName=long_name, Payload=b'{"b": 2}')
assert json.loads(r["Payload"].read())["event"] == {"b": 2}, r
assert error_code(lam.get_function, FunctionName=long_name.lower()) == (
    "ResourceNotFoundException", 404)
lam.delete_function(FunctionName=long_name)
assert error_code(
    lam.invoke, FunctionName="boto-fn", Payload=b"x" * (6 * 1024 * 1024 + 1)
) == ("RequestTooLargeException", 413)
assert error_code(
    lam.invoke, FunctionName="boto-fn", InvocationType="Event", Payload=b"1" * (1024 * 1024 + 1)
) == ("RequestTooLargeException", 413)
# Up to 1 MiB is taken for an Event, as Lambda takes it.
r = lam.invoke(FunctionName="boto-fn", InvocationType="Event", Payload=b"1" * (300 * 1024))
assert r["StatusCode"] == 202, r
assert error_code(lam.invoke, FunctionName="boto-fn", Payload=b"{not json") == (
    "InvalidRequestContentException", 400)

# Throttling: the function "slow" (deployed by the test with max_instances 1) refuses a
# second concurrent synchronous request with Lambda's 429 at once (Ember's own API would
# queue it).
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futs = [pool.submit(lambda: lam.invoke(FunctionName="slow", Payload=b"{}")) for _ in range(4)]
    codes = []
    for f in futs:
        try:
            codes.append(f.result()["StatusCode"])
        except lam.exceptions.TooManyRequestsException as e:
            assert e.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded", e.response
            codes.append(429)
assert 200 in codes and 429 in codes, codes

# Every setting is carried out or refused, never dropped.
assert got["Configuration"]["EphemeralStorage"]["Size"] == 512, got  # Lambda's default /tmp
for extra in [
    {"Layers": ["arn:aws:lambda:us-east-1:123456789012:layer:deps:1"]},
    {"TracingConfig": {"Mode": "Active"}},
    {"DeadLetterConfig": {"TargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq"}},
    {"EphemeralStorage": {"Size": 10241}},  # past Lambda's 10240
    {"FileSystemConfigs": [{"Arn": "arn:aws:elasticfilesystem:x", "LocalMountPath": "/mnt/x"}]},
    {"LoggingConfig": {"SystemLogLevel": "DEBUG"}},
    {"LoggingConfig": {"LogGroup": "/elsewhere"}},
]:
    assert error_code(
        lam.create_function, FunctionName="refused-fn", Runtime="python3.12", Role="r",
        Handler="lambda_function.lambda_handler", Code={"ZipFile": code(V1)}, **extra,
    ) == ("InvalidParameterValueException", 400), extra
assert error_code(lam.get_function, FunctionName="refused-fn") == ("ResourceNotFoundException", 404)
stale = lam.get_function(FunctionName="boto-fn")["Configuration"]["RevisionId"]
lam.update_function_configuration(FunctionName="boto-fn", Description="newer", RevisionId=stale)
assert error_code(
    lam.update_function_configuration, FunctionName="boto-fn", Description="x", RevisionId=stale
) == ("PreconditionFailedException", 412)

# Tags: kept, listed, added and removed by the tagging API.
lam.tag_resource(Resource=arn, Tags={"team": "data", "cost": "7"})
assert lam.list_tags(Resource=arn)["Tags"] == {"team": "data", "cost": "7"}
lam.untag_resource(Resource=arn, TagKeys=["cost"])
assert lam.list_tags(Resource=arn)["Tags"] == {"team": "data"}
assert lam.get_function(FunctionName="boto-fn")["Tags"] == {"team": "data"}
assert error_code(lam.tag_resource, Resource=arn, Tags={"aws:x": "y"}) == (
    "InvalidParameterValueException", 400)

# Reserved concurrency is the function's instance limit.
assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName="boto-fn")
assert lam.put_function_concurrency(
    FunctionName="boto-fn", ReservedConcurrentExecutions=3)["ReservedConcurrentExecutions"] == 3
assert lam.get_function_concurrency(FunctionName="boto-fn")["ReservedConcurrentExecutions"] == 3
lam.delete_function_concurrency(FunctionName="boto-fn")
settings = lam.get_account_settings()
assert settings["AccountUsage"]["FunctionCount"] >= 1, settings

# An operation Ember does not implement says so in an error botocore reads.
assert error_code(lam.list_event_source_mappings) == ("UnknownOperationException", 404)

# Resource policies (AddPermission, as deploy tools call it): kept and shown as Lambda's.
assert error_code(lam.get_policy, FunctionName="boto-fn") == ("ResourceNotFoundException", 404)
added = lam.add_permission(
    FunctionName="boto-fn", StatementId="from-s3", Action="lambda:InvokeFunction",
    Principal="s3.amazonaws.com", SourceArn="arn:aws:s3:::uploads")
stmt = json.loads(added["Statement"])
assert stmt["Principal"] == {"Service": "s3.amazonaws.com"}, stmt
assert stmt["Condition"] == {"ArnLike": {"AWS:SourceArn": "arn:aws:s3:::uploads"}}, stmt
policy = json.loads(lam.get_policy(FunctionName="boto-fn")["Policy"])
assert [x["Sid"] for x in policy["Statement"]] == ["from-s3"], policy
assert error_code(
    lam.add_permission, FunctionName="boto-fn", StatementId="from-s3",
    Action="lambda:InvokeFunction", Principal="s3.amazonaws.com",
) == ("ResourceConflictException", 409)
lam.remove_permission(FunctionName="boto-fn", StatementId="from-s3")
assert error_code(lam.get_policy, FunctionName="boto-fn")[1] == 404
assert error_code(lam.remove_permission, FunctionName="boto-fn", StatementId="from-s3")[1] == 404
assert error_code(lam.get_code_signing_config,
                  CodeSigningConfigArn="arn:aws:lambda:us-east-1:000000000000:code-signing-config:csc-0123456789abcdef0"
                  ) == ("UnknownOperationException", 404)

# Function URLs: an HTTP endpoint per function, Lambda's payload format 2.0.
lam.create_function(
    FunctionName="url-fn", Runtime="python3.12", Role="r", Handler="lambda_function.h",
    Code={"ZipFile": code(
        "import json\n"
        "def h(event, context):\n"
        "    if event['rawPath'] == '/plain':\n"
        "        return {'plain': True}\n"
        "    ctx = event['requestContext']['http']\n"
        "    return {'statusCode': 201, 'headers': {'x-ember': 'yes'},\n"
        "            'cookies': ['seen=1'],\n"
        "            'body': json.dumps({'path': event['rawPath'], 'method': ctx['method'],\n"
        "                                'q': event.get('queryStringParameters'),\n"
        "                                'body': event.get('body'),\n"
        "                                'version': event['version']})}\n")},
)
assert error_code(lam.get_function_url_config, FunctionName="url-fn") == (
    "ResourceNotFoundException", 404)
made = lam.create_function_url_config(FunctionName="url-fn", AuthType="NONE")
furl = made["FunctionUrl"]
assert furl.endswith("/lambda-url/url-fn/") and made["AuthType"] == "NONE", made
assert lam.get_function_url_config(FunctionName="url-fn")["FunctionUrl"] == furl
import urllib.request
resp = urllib.request.urlopen(urllib.request.Request(
    furl + "items/7?color=red", data=b"payload", method="POST"))
assert resp.status == 201 and resp.headers["x-ember"] == "yes", resp.headers
assert resp.headers["set-cookie"] == "seen=1", resp.headers
assert json.loads(resp.read()) == {"path": "/items/7", "method": "POST", "q": {"color": "red"},
                                   "body": "payload", "version": "2.0"}
resp = urllib.request.urlopen(furl + "plain")
assert resp.status == 200 and json.loads(resp.read()) == {"plain": True}
assert error_code(lam.create_function_url_config, FunctionName="url-fn", AuthType="NONE") == (
    "ResourceConflictException", 409)
# Cors as Lambda carries it out: preflights answered without the function, the allowed
# origin's requests given the configured headers over the function's own.
lam.update_function_url_config(FunctionName="url-fn", Cors={
    "AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"],
    "AllowHeaders": ["x-custom"], "ExposeHeaders": ["x-ember"], "MaxAge": 300})
assert lam.get_function_url_config(FunctionName="url-fn")["Cors"]["MaxAge"] == 300
resp = urllib.request.urlopen(urllib.request.Request(furl + "items", method="OPTIONS", headers={
    "Origin": "https://app.example", "Access-Control-Request-Method": "POST"}))
assert resp.status == 200 and resp.read() == b"", resp.status
assert resp.headers["access-control-allow-origin"] == "https://app.example", resp.headers
assert resp.headers["access-control-allow-methods"] == "GET,POST", resp.headers
assert resp.headers["access-control-max-age"] == "300", resp.headers
resp = urllib.request.urlopen(urllib.request.Request(
    furl + "items", data=b"x", method="POST", headers={"Origin": "https://app.example"}))
assert resp.status == 201 and resp.headers["access-control-expose-headers"] == "x-ember"
resp = urllib.request.urlopen(urllib.request.Request(
    furl + "items", data=b"x", method="POST", headers={"Origin": "https://evil.example"}))
assert "access-control-allow-origin" not in resp.headers, resp.headers
assert error_code(lam.update_function_url_config, FunctionName="url-fn",
                  Cors={"MaxAge": 90000}) == ("InvalidParameterValueException", 400)
assert error_code(lam.update_function_url_config, FunctionName="url-fn",
                  InvokeMode="RESPONSE_STREAM") == ("InvalidParameterValueException", 400)
lam.delete_function_url_config(FunctionName="url-fn")
try:
    urllib.request.urlopen(furl)
    raise AssertionError("a deleted function URL still answers")
except urllib.error.HTTPError as e:
    assert e.code == 404, e
lam.delete_function(FunctionName="url-fn")

# Packages: a requirements.txt in the zip is installed as the function's package set; a
# bundled package built for another Python is refused at deploy, saying why.
lam.create_function(
    FunctionName="reqs-fn", Runtime="python3.12", Role="r", Handler="lambda_function.h",
    Code={"ZipFile": zipped({
        "requirements.txt": "# pure Python, small\nsix==1.16.0\n",
        "lambda_function.py": "import six\ndef h(e, c):\n    return six.__version__\n",
    })},
)
assert json.loads(lam.invoke(FunctionName="reqs-fn")["Payload"].read()) == "1.16.0"
lam.delete_function(FunctionName="reqs-fn")
other = "cpython-39" if sys.version_info[:2] != (3, 9) else "cpython-310"
try:
    lam.create_function(
        FunctionName="wheels-fn", Runtime="python3.12", Role="r", Handler="lambda_function.h",
        Code={"ZipFile": zipped({
            "lambda_function.py": "def h(e, c):\n    return 1\n",
            f"fast/_speedups.{other}-x86_64-linux-gnu.so": "not really",
        })},
    )
    raise AssertionError("a zip built for another Python was deployed")
except lam.exceptions.InvalidParameterValueException as e:
    assert "this node runs Python" in str(e) and other in str(e), e
assert error_code(
    lam.create_function, FunctionName="opts-fn", Runtime="python3.12", Role="r",
    Handler="lambda_function.h",
    Code={"ZipFile": zipped({"requirements.txt": "-r /etc/passwd\n",
                             "lambda_function.py": "def h(e, c):\n    return 1\n"})},
) == ("InvalidParameterValueException", 400)

# LoggingConfig: JSON records at the application level asked for.
lam.create_function(
    FunctionName="json-logs", Runtime="python3.12", Role="r", Handler="lambda_function.h",
    LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "WARN"},
    Code={"ZipFile": code(
        "import logging\nlog = logging.getLogger()\n"
        "def h(e, c):\n    log.info('quiet')\n    log.warning('loud')\n    return 1\n")},
)
cfg = lam.get_function_configuration(FunctionName="json-logs")["LoggingConfig"]
assert (cfg["LogFormat"], cfg["ApplicationLogLevel"]) == ("JSON", "WARN"), cfg
r = lam.invoke(FunctionName="json-logs", LogType="Tail")
tail = base64.b64decode(r["LogResult"]).decode()
records = [json.loads(l) for l in tail.splitlines() if l.startswith("{")]
assert [(x["level"], x["message"]) for x in records] == [("WARNING", "loud")], tail
assert records[0]["requestId"] == r["ResponseMetadata"]["RequestId"], records
assert error_code(
    lam.update_function_configuration, FunctionName="json-logs",
    LoggingConfig={"LogFormat": "Text", "ApplicationLogLevel": "INFO"},
) == ("InvalidParameterValueException", 400)
lam.delete_function(FunctionName="json-logs")

# The caller's client context reaches the handler (Python's context.client_context).
CC = {"custom": {"tenant": "t1"}, "client": {"app_title": "demo", "installation_id": "i-9"},
      "env": {"platform": "ios"}}
CLIENT_CONTEXT = base64.b64encode(json.dumps(CC).encode()).decode()
lam.create_function(
    FunctionName="ctx-fn", Runtime="python3.12", Role="r", Handler="lambda_function.h",
    Code={"ZipFile": code(
        "def h(event, context):\n"
        "    cc = context.client_context\n"
        "    if cc is None:\n"
        "        return None\n"
        "    return {'custom': cc.custom, 'env': cc.env, 'app': cc.client.app_title,\n"
        "            'install': cc.client.installation_id}\n")},
)
r = lam.invoke(FunctionName="ctx-fn", Payload=b"{}", ClientContext=CLIENT_CONTEXT)
assert json.loads(r["Payload"].read()) == {
    "custom": {"tenant": "t1"}, "env": {"platform": "ios"}, "app": "demo", "install": "i-9"}
assert json.loads(lam.invoke(FunctionName="ctx-fn", Payload=b"{}")["Payload"].read()) is None
assert error_code(lam.invoke, FunctionName="ctx-fn", ClientContext="not base64 json!") == (
    "InvalidParameterValueException", 400)
lam.delete_function(FunctionName="ctx-fn")

# Node.js: async and callback handlers, console as Lambda's, errors with their trace.
NODE = """
exports.handler = async (event, context) => {
  console.log("node got", JSON.stringify(event), "\\nsecond line");
  if (event.fail) throw new TypeError("asked to fail");
  return {runtime: process.version.slice(0, 3), event, fn: context.functionName,
          memory: context.memoryLimitInMB, arn: context.invokedFunctionArn,
          left: context.getRemainingTimeInMillis() > 0, rid: context.awsRequestId,
          cc: context.clientContext};
};
exports.cb = (event, context, callback) => { setTimeout(() => callback(null, {cb: event.x}), 5); };
"""
for rt in ["nodejs20.x", "nodejs22.x"]:
    name = "node-" + rt.replace(".", "")
    made = lam.create_function(
        FunctionName=name, Runtime=rt, Role="r", Handler="index.handler",
        Code={"ZipFile": zipped({"index.js": NODE})},
    )
    assert made["Runtime"] == rt, made
    r = lam.invoke(FunctionName=name, Payload=b'{"a": 1}', LogType="Tail")
    assert "FunctionError" not in r, (r, base64.b64decode(r.get("LogResult", "")))
    out = json.loads(r["Payload"].read())
    rid = r["ResponseMetadata"]["RequestId"]
    assert out == {"runtime": "v" + __import__("subprocess").run(
        ["node", "--version"], capture_output=True, text=True).stdout[1:3], "event": {"a": 1},
        "fn": name, "memory": "128", "arn": arn_of(name), "left": True, "rid": rid}, out
    tail = base64.b64decode(r["LogResult"]).decode()
    assert f"\t{rid}\tINFO\tnode got {{\"a\":1}} \rsecond line" in tail, tail
    r = lam.invoke(FunctionName=name, Payload=b"{}", ClientContext=CLIENT_CONTEXT)
    assert json.loads(r["Payload"].read())["cc"] == CC, r
    r = lam.invoke(FunctionName=name, Payload=b'{"fail": true}')
    assert r["FunctionError"] == "Unhandled", r
    doc = json.loads(r["Payload"].read())
    assert (doc["errorType"], doc["errorMessage"]) == ("TypeError", "asked to fail"), doc
    assert any("index.js" in line for line in doc["stackTrace"]), doc
    lam.update_function_configuration(FunctionName=name, Handler="index.cb")
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    out = json.loads(lam.invoke(FunctionName=name, Payload=b'{"x": 7}')["Payload"].read())
    assert out == {"cb": 7}, out
    lam.update_function_configuration(FunctionName=name, Handler="index.missing")
    r = lam.invoke(FunctionName=name, Payload=b"{}")
    doc = json.loads(r["Payload"].read())
    assert doc["errorType"] == "Runtime.HandlerNotFound", doc
    lam.delete_function(FunctionName=name)

# Event-invoke config: retries, age, and destinations (functions) that get Lambda's
# invocation record of each success and failure.
lam.create_function(
    FunctionName="dest-fn", Runtime="python3.12", Role="r", Handler="lambda_function.h",
    Code={"ZipFile": code(
        "import json\n"
        "def h(event, context):\n"
        "    rc = event['requestContext']\n"
        "    print('DEST', json.dumps([rc['condition'], rc['approximateInvokeCount'],\n"
        "          event['requestPayload'], event['responsePayload'],\n"
        "          event['responseContext'].get('functionError')]))\n")},
)
lam.create_function(
    FunctionName="async-fn", Runtime="python3.12", Role="r", Handler="lambda_function.h",
    Code={"ZipFile": code(
        "def h(event, context):\n"
        "    if event.get('fail'):\n"
        "        raise RuntimeError('failed on purpose')\n"
        "    return {'ok': event.get('n')}\n")},
)
assert error_code(lam.get_function_event_invoke_config, FunctionName="async-fn") == (
    "ResourceNotFoundException", 404)
put = lam.put_function_event_invoke_config(
    FunctionName="async-fn", MaximumRetryAttempts=0, MaximumEventAgeInSeconds=300,
    DestinationConfig={"OnSuccess": {"Destination": arn_of("dest-fn")},
                       "OnFailure": {"Destination": "dest-fn"}})
assert put["MaximumRetryAttempts"] == 0 and put["FunctionArn"] == arn_of("async-fn:$LATEST"), put
lam.invoke(FunctionName="async-fn", InvocationType="Event", Payload=b'{"n": 5}')
lam.invoke(FunctionName="async-fn", InvocationType="Event", Payload=b'{"fail": true}')
import time
want = [
    ["Success", 1, {"n": 5}, {"ok": 5}, None],
    ["RetriesExhausted", 1, {"fail": True}],
]
for _ in range(150):
    text = urllib.request.urlopen(url + "/v1/functions/dest-fn/logs?lines=200").read().decode()
    got = [json.loads(line.split("DEST ", 1)[1]) for line in text.splitlines() if "DEST [" in line]
    if len(got) >= 2:
        break
    time.sleep(0.2)
got.sort(key=lambda g: g[0] != "Success")
assert got[0] == want[0], got
assert got[1][:3] == want[1] and got[1][4] == "Unhandled", got
assert got[1][3]["errorType"] == "RuntimeError", got
assert got[1][3]["errorMessage"] == "failed on purpose", got
up = lam.update_function_event_invoke_config(FunctionName="async-fn", MaximumRetryAttempts=2)
assert up["MaximumRetryAttempts"] == 2 and up["MaximumEventAgeInSeconds"] == 300, up
assert up["DestinationConfig"]["OnSuccess"]["Destination"] == arn_of("dest-fn"), up
listed = lam.list_function_event_invoke_configs(FunctionName="async-fn")
assert len(listed["FunctionEventInvokeConfigs"]) == 1, listed
assert error_code(
    lam.put_function_event_invoke_config, FunctionName="async-fn",
    DestinationConfig={"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:000000000000:q"}},
) == ("InvalidParameterValueException", 400)
assert error_code(
    lam.put_function_event_invoke_config, FunctionName="async-fn",
    DestinationConfig={"OnFailure": {"Destination": "no-such-fn"}},
) == ("InvalidParameterValueException", 400)
assert error_code(
    lam.put_function_event_invoke_config, FunctionName="async-fn",
    DestinationConfig={"OnSuccess": {"Destination": "async-fn"}},
) == ("InvalidParameterValueException", 400)
# Two functions naming each other: the records stop after 16 in a row, as Lambda stops a
# recursive loop.
lam.put_function_event_invoke_config(
    FunctionName="async-fn", DestinationConfig={"OnSuccess": {"Destination": "dest-fn"}})
lam.put_function_event_invoke_config(
    FunctionName="dest-fn", DestinationConfig={"OnSuccess": {"Destination": "async-fn"}})
lam.invoke(FunctionName="async-fn", InvocationType="Event", Payload=b'{"n": 1}')
for _ in range(200):
    logs = [urllib.request.urlopen(url + f"/v1/functions/{f}/logs?lines=400").read().decode()
            for f in ("async-fn", "dest-fn")]
    if any("recursive loop" in text for text in logs):
        break
    time.sleep(0.1)
assert any("recursive loop" in text for text in logs), logs
lam.delete_function_event_invoke_config(FunctionName="dest-fn")
lam.delete_function_event_invoke_config(FunctionName="async-fn")
assert error_code(lam.get_function_event_invoke_config, FunctionName="async-fn")[1] == 404
lam.delete_function(FunctionName="async-fn")
lam.delete_function(FunctionName="dest-fn")

# Delete.
lam.delete_function(FunctionName="boto-fn")
assert error_code(lam.get_function, FunctionName="boto-fn") == ("ResourceNotFoundException", 404)
assert error_code(lam.delete_function, FunctionName="boto-fn") == ("ResourceNotFoundException", 404)
print("boto3 conformance: OK")
