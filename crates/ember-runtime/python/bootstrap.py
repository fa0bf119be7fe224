"""Ember's Python runtime bootstrap.

Imported by the node's launcher (`python -I -c ... DIR FD`), which then calls main(). It speaks Ember's framed protocol
(crates/ember-runtime/src/protocol.rs) on the inherited file descriptor FD; stdout and stderr
are the function's log. Keep the imports here minimal: everything imported before the
function's packages is paid on every cold boot.

JSON goes through CPython's C accelerator `_json` directly, the same scanner and encoder that
`json` uses: `import json` pulls in `re`, which costs about as much as a bare interpreter's
whole start-up. A function that imports `json` itself pays for it in its own import.
"""

import _json
import os
import sys
import time

BOOT, PRELOADED, INIT, READY, INIT_ERROR, INVOKE, RESULT, ERROR, HOOKED = 1, 2, 3, 4, 5, 6, 7, 8, 9
SNAPSHOT, SNAPSHOT_READY, CONTINUE = 10, 11, 12
MAX_FRAME = 64 * 1024 * 1024
# Where Lambda puts a layer's Python packages for this interpreter (/opt/python too).
OPT_SITE = "/opt/python/lib/python%d.%d/site-packages" % sys.version_info[:2]


def _read_exact(fd, n):
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def read_frame(fd):
    n = int.from_bytes(_read_exact(fd, 4), "big")
    if n < 1 or n > MAX_FRAME:
        raise ValueError("frame length %d out of bounds" % n)
    body = _read_exact(fd, n)
    return body[0], body[1:]


def write_frame(fd, kind, body):
    data = (len(body) + 1).to_bytes(4, "big") + bytes((kind,)) + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _ScanContext:
    """What `_json.make_scanner` reads off a decoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_ScanContext())
_WS = " \t\n\r"


def loads(data):
    s = data.decode("utf-8")
    start = len(s) - len(s.lstrip(_WS))
    try:
        obj, end = _scan(s, start)
    except StopIteration as e:
        raise ValueError("invalid JSON at position %d" % e.value) from None
    if s[end:].strip(_WS):
        raise ValueError("extra data after JSON at position %d" % end)
    return obj


# A Decimal's text stands in a result's JSON where the encoder wrote this placeholder (a
# string no result holds by chance: a random tag between NUL characters).
_RAW_TAG = os.urandom(8).hex()


def dumps(obj):
    """json.dumps(obj, allow_nan=False) with what Lambda's Python runtime also encodes: a
    Decimal as its own digits (1.10 stays 1.10), bytes nested in a result as UTF-8 text, an
    object with `_asdict()` as that dict. NaN and Infinity are not JSON, so clients could not
    parse them: refused (a Decimal's too)."""
    raws = []

    def default(o):
        t = type(o)
        if t.__name__ == "Decimal" and t.__module__ in ("decimal", "_decimal"):
            if not o.is_finite():
                raise ValueError("Out of range float values are not JSON compliant: %s" % o)
            raws.append(str(o))
            return "\0%s:%d\0" % (_RAW_TAG, len(raws) - 1)
        if isinstance(o, (bytes, bytearray)):
            return bytes(o).decode("utf-8")
        if callable(getattr(o, "_asdict", None)):
            return o._asdict()
        raise TypeError("Object of type %s is not JSON serializable" % t.__name__)

    encode = _json.make_encoder(
        {}, default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
    text = "".join(encode(obj, 0))
    if raws:
        # One pass: each placeholder, in order, gives way to its Decimal's digits.
        parts = text.split('"\\u0000%s:' % _RAW_TAG)
        out = [parts[0]]
        for part in parts[1:]:
            index, _, rest = part.partition('\\u0000"')
            out.append(raws[int(index)])
            out.append(rest)
        text = "".join(out)
    return text.encode()


def stack(tb):
    """A traceback's frames as Lambda's stackTrace gives them (one string per frame, as
    traceback.format_list writes it, without the caret lines), the bootstrap's own leading
    frames left out."""
    import traceback

    frames = traceback.extract_tb(tb)
    while frames and frames[0].filename == __file__:
        frames.pop(0)
    return traceback.format_list([(f.filename, f.lineno, f.name, f.line) for f in frames])


def error_doc(exc):
    return {"type": type(exc).__name__, "message": str(exc), "traceback": stack(exc.__traceback__)}


class Fault(Exception):
    """A failure Lambda's runtime names itself (Runtime.ImportModuleError, ...)."""

    def __init__(self, error_type, message, trace=()):
        super().__init__(message)
        self.doc = {"type": error_type, "message": message, "traceback": list(trace)}


def json_logs():
    """Whether the function's log records are JSON (LoggingConfig LogFormat JSON)."""
    return os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"


def utc_now(t=None):
    """`t` (now when None) as Lambda's runtime writes times: ISO 8601, milliseconds, UTC."""
    if t is None:
        t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def log_error(doc):
    """An error in the function's log as Lambda's runtime writes it: `[ERROR] Type: message`,
    then the traceback, as one record (its lines joined by carriage returns, leading spaces
    made non-breaking); in the JSON format, one JSON object."""
    if json_logs():
        record = {
            "timestamp": utc_now(),
            "log_level": "ERROR",
            "errorMessage": doc["message"],
            "errorType": doc["type"],
            "requestId": request_id,
            "stackTrace": doc["traceback"],
        }
        sys.stdout.write(dumps(record).decode() + "\n")
        return
    head = "[ERROR] %s: %s" % (doc["type"], doc["message"])
    lines = [head, "Traceback (most recent call last):"]
    for frame in doc["traceback"]:
        for line in frame.splitlines():
            stripped = line.lstrip(" ")
            lines.append("\u00a0" * (len(line) - len(stripped)) + stripped)
    sys.stdout.write("\r".join(lines) + "\n")


def fail(fd, kind, doc, **extra):
    """Says `doc` in the function's log and to the host (as INIT_ERROR or ERROR)."""
    try:
        log_error(doc)
    except Exception:  # a closed or broken stdout must not stop the answer
        pass
    doc.update(extra)
    write_frame(fd, kind, dumps(doc))


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, doc):
        doc = doc if isinstance(doc, dict) else {}
        self.cognito_identity_id = doc.get("cognitoIdentityId")
        self.cognito_identity_pool_id = doc.get("cognitoIdentityPoolId")


class Client:
    __slots__ = (
        "installation_id",
        "app_title",
        "app_version_name",
        "app_version_code",
        "app_package_name",
    )

    def __init__(self, doc):
        for name in self.__slots__:
            setattr(self, name, doc.get(name))


class ClientContext:
    __slots__ = ("custom", "env", "client")

    def __init__(self, doc):
        self.custom = doc.get("custom")
        self.env = doc.get("env")
        client = doc.get("client")
        self.client = Client(client) if isinstance(client, dict) else None


class Context:
    """What Lambda's Python runtime hands a handler as `context`: the function's identity
    from the environment variables (strings, as there), the request's from Ember's invoke
    header."""

    def __init__(self, header):
        env = os.environ
        self.aws_request_id = header["request_id"]
        self.invoked_function_arn = header.get("invoked_function_arn")
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.identity = CognitoIdentity(header.get("identity"))
        cc = header.get("client_context")
        self.client_context = ClientContext(cc) if isinstance(cc, dict) else None
        self._deadline_ms = header["deadline_ms"]

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def log(self, msg):
        sys.stdout.write(str(msg))


# The invocation being served: what Lambda's log records name.
request_id = ""


class LogRecords:
    """Python's logging set up as Lambda's runtime sets it, once the function (or a package)
    imports `logging`: one handler on the root logger writing
    `[LEVEL]\tTIME.mmmZ\tREQUEST-ID\tmessage` to the function's log, times in UTC, the
    level from AWS_LAMBDA_LOG_LEVEL when set (else Python's WARNING). Done on import, through
    an import hook, so that a function that never logs does not pay for importing `logging`
    at its start."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "logging":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = LogRecords.Loader(spec.loader)
        return spec

    class Loader:
        def __init__(self, inner):
            self.inner = inner

        def create_module(self, spec):
            return self.inner.create_module(spec)

        def exec_module(self, module):
            self.inner.exec_module(module)
            try:
                configure_logging(module)
            except Exception as exc:  # the function logs as Python would, then
                print("ember: setting up logging as Lambda does failed: %r" % exc, file=sys.stderr)

        def __getattr__(self, name):
            return getattr(self.inner, name)


def configure_logging(logging):
    class RequestId(logging.Filter):
        def filter(self, record):
            record.aws_request_id = request_id
            return True

    class Json(logging.Formatter):
        """Lambda's JSON log format: timestamp, level, message, logger, requestId, and the
        exception's type, message and frames when a record has one."""

        def format(self, record):
            doc = {
                "timestamp": utc_now(record.created),
                "level": record.levelname,
                "message": record.getMessage(),
                "logger": record.name,
                "requestId": getattr(record, "aws_request_id", ""),
            }
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                doc["errorType"] = type(exc).__name__
                doc["errorMessage"] = str(exc)
                doc["stackTrace"] = stack(exc.__traceback__)
            return dumps(doc).decode()

    logging.Formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stdout)
    if json_logs():
        handler.setFormatter(Json())
    else:
        handler.setFormatter(
            logging.Formatter(
                "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
                "%Y-%m-%dT%H:%M:%S",
            )
        )
    handler.addFilter(RequestId())
    root = logging.getLogger()
    root.addHandler(handler)
    # Lambda's level names; with the JSON format and no level, INFO (as Lambda's).
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper() or ("INFO" if json_logs() else "")
    level = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
    if level in logging._nameToLevel:
        root.setLevel(logging._nameToLevel[level])


def install_logging_hook():
    if "logging" in sys.modules:
        configure_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, LogRecords)


def execution_env():
    """AWS_EXECUTION_ENV as Lambda sets it for this interpreter."""
    os.environ.setdefault("AWS_EXECUTION_ENV", "AWS_Lambda_python%d.%d" % sys.version_info[:2])


def prepare_snapshot(fd):
    """The pre-snapshot hook: the process is about to be dumped as a dependency image."""
    import gc

    gc.collect()
    # Everything the imports made moves to a permanent generation: later collections in the
    # restored instances never walk it, so they neither fault those pages in nor copy them.
    gc.freeze()
    closed = 0
    for name in os.listdir("/proc/self/fd"):
        n = int(name)
        if n > 2 and n != fd:
            try:
                os.close(n)
                closed += 1
            except OSError:  # the directory listing's own descriptor, gone already
                pass
    return {"threads": len(os.listdir("/proc/self/task")), "closed_fds": closed}


def after_restore():
    """The after-restore hook: every instance restored from one image starts with the same
    memory, so whatever was seeded at import is seeded again here, from the kernel."""
    m = sys.modules
    if "random" in m:
        m["random"].seed()
    if "numpy.random" in m:
        m["numpy.random"].seed()  # the legacy global generator behind numpy.random.rand()
    if "tempfile" in m:
        m["tempfile"]._name_sequence = None  # its generator reseeds only on a pid change
    if "ssl" in m:
        m["ssl"].RAND_add(os.urandom(32), 32.0)  # OpenSSL's generator state was copied too
    if "multiprocessing" in m:
        m["multiprocessing"].current_process().authkey = os.urandom(32)
    if "logging" in m:
        m["logging"]._startTime = time.time()  # LogRecord.relativeCreated counts from it


# The function's own snapshot hooks, with the API of AWS's `snapshot-restore-py` package (the
# runtime hooks of Lambda SnapStart), so that handlers written for SnapStart run unchanged:
# `register_before_snapshot(func, *args, **kwargs)` and `register_after_restore(...)` record
# `(func, args, kwargs)` and return `func` (so both work as decorators); registering a function
# twice runs it twice. Before-snapshot hooks run last-registered first, after-restore hooks in
# the order they were registered. `get_before_snapshot()` and `get_after_restore()` return the
# registries as that package does. The module is written here (not copied from the package)
# and put into sys.modules before anything else is imported, so a function needs no copy of it.
_before_snapshot = []
_after_restore = []


def register_before_snapshot(func, *args, **kwargs):
    _before_snapshot.append((func, args, kwargs))
    return func


def register_after_restore(func, *args, **kwargs):
    _after_restore.append((func, args, kwargs))
    return func


def get_before_snapshot():
    return _before_snapshot


def get_after_restore():
    return _after_restore


def install_hooks_module():
    m = type(sys)("snapshot_restore_py", "Ember's SnapStart-compatible runtime hooks.")
    m.__version__ = "1.0.0"
    m.__all__ = ["register_before_snapshot", "register_after_restore"]
    m.register_before_snapshot = register_before_snapshot
    m.register_after_restore = register_after_restore
    m.get_before_snapshot = get_before_snapshot
    m.get_after_restore = get_after_restore
    sys.modules["snapshot_restore_py"] = m


def snapshot_point(fd):
    """SNAPSHOT: the function's before-snapshot hooks, then the platform's preparation. Answers
    SNAPSHOT_READY and says whether a snapshot may be taken."""
    t0 = time.perf_counter()
    try:
        for func, args, kwargs in reversed(list(_before_snapshot)):
            func(*args, **kwargs)
    except Exception as exc:  # no snapshot then, but the instance serves on
        us = int((time.perf_counter() - t0) * 1e6)
        doc = error_doc(exc)
        log_error(doc)
        write_frame(fd, SNAPSHOT_READY, dumps({"hook_us": us, "error": doc}))
        return False
    hook_us = int((time.perf_counter() - t0) * 1e6)
    t0 = time.perf_counter()
    import gc

    gc.collect()
    # What the handler's import made joins what the image froze: collections in the restored
    # copies never walk it. Descriptors stay open: the function may hold files; the dump names
    # what it cannot take.
    gc.freeze()
    ready = {
        "hook_us": hook_us,
        "prepare_us": int((time.perf_counter() - t0) * 1e6),
        "threads": len(os.listdir("/proc/self/task")),
    }
    write_frame(fd, SNAPSHOT_READY, dumps(ready))
    return True


def run_after_restore_hooks():
    """The function's after-restore hooks, in the order they were registered."""
    for func, args, kwargs in list(_after_restore):
        func(*args, **kwargs)


def restore_env(init):
    """INIT(restored): the instance's own environment, then the platform's reseeding. Returns
    the time it took; HOOKED goes out next."""
    t0 = time.perf_counter()
    os.environ.clear()
    os.environ.update(init.get("env", {}))
    execution_env()
    after_restore()
    return int((time.perf_counter() - t0) * 1e6)


def packages_imported(before, code_dir):
    """Modules the handler's import added that are not the function's own code (its code
    directory), at most 512: the node adds those of the function's packages to their image."""
    own = os.path.join(code_dir, "")
    plain = type(sys).__getattribute__
    out = []
    for name, mod in list(sys.modules.items()):
        if name in before or name == "__main__":
            continue
        try:
            # Read from the module's own dict, never through its attributes: a lazily
            # loaded module (importlib.util.LazyLoader) runs its code on the first access.
            if type(mod).__getattribute__ is not plain:
                continue
            path = object.__getattribute__(mod, "__dict__").get("__file__") or ""
        except Exception:
            continue
        if not isinstance(path, str) or path.startswith(own):
            continue
        out.append(name)
        if len(out) == 512:
            break
    return sorted(out)


def main():
    fd = int(sys.argv[1])
    # What a function prints must reach its log line by line, not when a buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    # Before the packages: one of them may register hooks, or depend on the package itself.
    install_hooks_module()
    # Before the packages too: one of them may log at its import.
    install_logging_hook()
    execution_env()

    kind, body = read_frame(fd)
    if kind != BOOT:
        raise SystemExit("ember bootstrap: expected BOOT, got frame kind %d" % kind)
    boot = loads(body)
    t0 = time.perf_counter()
    for name in boot.get("imports", []):
        try:
            __import__(name)
        except Exception as exc:  # a broken optional module must not stop the function
            print("ember: preloading %s failed: %r" % (name, exc), file=sys.stderr)
    preloaded = {"import_packages_us": int((time.perf_counter() - t0) * 1e6)}
    if boot.get("snapshot"):
        preloaded.update(prepare_snapshot(fd))
    write_frame(fd, PRELOADED, dumps(preloaded))

    kind, body = read_frame(fd)
    if kind != INIT:
        raise SystemExit("ember bootstrap: expected INIT, got frame kind %d" % kind)
    init = loads(body)
    hook_us = 0
    if init.get("restored"):
        hook_us = restore_env(init)
        # From here on the function's own code runs: a failure is its own, not the image's.
        write_frame(fd, HOOKED, b"{}")
    t0 = time.perf_counter()
    before = set(sys.modules)
    try:
        sys.path.insert(0, init["code_dir"])
        # Lambda's: a function's layers' Python packages at /opt, after its own code.
        sys.path[1:1] = [OPT_SITE, "/opt/python"]
        os.chdir(init["code_dir"])
        handler = load_handler(init["handler"])
    except Fault as f:
        fail(fd, INIT_ERROR, f.doc)
        return
    except BaseException as exc:
        fail(fd, INIT_ERROR, error_doc(exc))
        return
    import_us = int((time.perf_counter() - t0) * 1e6)
    ready = {"import_handler_us": import_us, "hook_us": hook_us}
    try:
        imported = packages_imported(before, init["code_dir"])
    except Exception:
        imported = []
    if imported:
        ready["imported"] = imported
    write_frame(fd, READY, dumps(ready))

    serve(fd, init, handler)


def load_handler(name):
    """The handler `module.function` names, or the Fault Lambda's runtime reports for it."""
    try:
        module_name, func_name = name.rsplit(".", 1)
    except ValueError as e:
        raise Fault("Runtime.MalformedHandlerName", "Bad handler '%s': %s" % (name, e)) from None
    if module_name.split(".")[0] in sys.builtin_module_names:
        raise Fault(
            "Runtime.BuiltInModuleConflict",
            "Cannot use built-in module %s as a handler module" % module_name,
        )
    try:
        module = __import__(module_name, fromlist=["_"])
    except ImportError as e:
        msg = "Unable to import module '%s': %s" % (module_name, e)
        raise Fault("Runtime.ImportModuleError", msg) from None
    except SyntaxError as e:
        msg = "Syntax error in module '%s': %s" % (module_name, e)
        trace = ['  File "%s" Line %s\n    %s' % (e.filename, e.lineno, (e.text or "").strip())]
        raise Fault("Runtime.UserCodeSyntaxError", msg, trace) from None
    try:
        return getattr(module, func_name)
    except AttributeError:
        msg = "Handler '%s' missing on module '%s'" % (func_name, module_name)
        raise Fault("Runtime.HandlerNotFound", msg) from None


def serve(fd, init, handler):
    """Waits for events: INVOKE, or SNAPSHOT (then CONTINUE, or INIT in a restored copy)."""
    global request_id
    perf = time.perf_counter
    # The process's first invocation reports the modules it imported (the node learns them
    # into the image, as it does the handler's import's).
    first = True
    while True:
        try:
            kind, body = read_frame(fd)
        except EOFError:
            return
        if kind == SNAPSHOT:
            if not snapshot_point(fd):
                continue
            try:
                kind, body = read_frame(fd)
            except EOFError:  # dumped, and the original let go
                return
            if kind == CONTINUE:
                # The original serves on: what its before-snapshot hooks closed is opened
                # again by its after-restore hooks, as in every restored copy (CRaC does the
                # same). One that raises leaves it in no known state: it ends.
                try:
                    run_after_restore_hooks()
                except BaseException as exc:
                    import traceback

                    traceback.print_exception(type(exc), exc, exc.__traceback__)
                    raise SystemExit("ember bootstrap: an after-restore hook raised after CONTINUE")
                continue
            if kind != INIT:
                raise SystemExit(
                    "ember bootstrap: expected CONTINUE or INIT after SNAPSHOT_READY, "
                    "got frame kind %d" % kind
                )
            restored = loads(body)
            if not restored.get("restored"):
                raise SystemExit("ember bootstrap: an INIT after SNAPSHOT_READY must be restored")
            if not resume(fd, restored, init):
                return
            init = restored  # the new instance's identity, for every Context from here
            continue
        if kind != INVOKE:
            raise SystemExit("ember bootstrap: expected INVOKE, got frame kind %d" % kind)
        hlen = int.from_bytes(body[:4], "big")
        header = loads(body[4 : 4 + hlen])
        before = set(sys.modules) if first else None
        first = False
        request_id = header["request_id"]
        t0 = perf()
        try:
            event = loads(body[4 + hlen :])
            result = handler(event, Context(header))
        except Exception as exc:
            us = int((perf() - t0) * 1e6)
            fail(fd, ERROR, error_doc(exc), duration_us=us)
            continue
        us = int((perf() - t0) * 1e6)
        try:
            # Bytes are the answer as they are (Lambda's runtime sends them unencoded).
            payload = bytes(result) if isinstance(result, (bytes, bytearray)) else dumps(result)
        except Exception as exc:
            doc = {"type": "Runtime.MarshalError", "message": "Unable to marshal response: %s" % exc}
            doc["traceback"] = []
            fail(fd, ERROR, doc, duration_us=us, marshal=True)
            continue
        head = {"duration_us": us}
        if before is not None:
            head["imported"] = packages_imported(before, init.get("code_dir") or "/")
        meta = dumps(head)
        write_frame(fd, RESULT, len(meta).to_bytes(4, "big") + meta + payload)


def resume(fd, init, before):
    """A copy restored from a function snapshot (`before` is the INIT it was made with): the
    platform's hook, HOOKED, the function's after-restore hooks, READY (the handler is imported
    already). False after INIT_ERROR."""
    hook_us = restore_env(init)
    # Restored from its function's snapshot, as a SnapStart instance is.
    os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"] = "snap-start"
    write_frame(fd, HOOKED, b"{}")
    t0 = time.perf_counter()
    try:
        old, new = before["code_dir"], init["code_dir"]
        if new != old:  # the same code, mounted elsewhere
            sys.path[:] = [new if p == old else p for p in sys.path]
            os.chdir(new)
        run_after_restore_hooks()
    except BaseException as exc:
        fail(fd, INIT_ERROR, error_doc(exc))
        return False
    ready = {
        "import_handler_us": 0,
        "hook_us": hook_us,
        "after_restore_us": int((time.perf_counter() - t0) * 1e6),
    }
    write_frame(fd, READY, dumps(ready))
    return True


def selfcheck(event, context):
    """The handler an image's test restore runs: every preloaded module is there and
    usable, and the instance has its own seeds."""
    names = event.get("modules", [])
    missing = [n for n in names if n not in sys.modules]
    for n in names:
        if n in sys.modules:
            len(dir(sys.modules[n]))
    r = sys.modules["random"].random() if "random" in sys.modules else None
    return {"missing": missing, "pid": os.getpid(), "random": r}


if __name__ == "__main__":
    main()
