// Ember's Node.js runtime: a Lambda Runtime API client, as Lambda's own Node.js runtime is.
//
// Started by the node as `node ember_bootstrap.js` in the function's code directory, with
// Lambda's environment (AWS_LAMBDA_RUNTIME_API, _HANDLER, LAMBDA_TASK_ROOT, ...). It loads
// the handler (`file.export`: file.js, file.mjs or file.cjs), then asks the Runtime API for
// events and answers each: an async handler's result, or a callback handler's
// (`(event, context, callback)`). console output goes to the function's log as Lambda's
// runtime writes it: `TIME\tREQUEST-ID\tLEVEL\tmessage`, a message's newlines as carriage
// returns (one record). Errors are Lambda's documents: {errorType, errorMessage, trace}.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const util = require('util');
const { pathToFileURL } = require('url');

const [apiHost, apiPort] = (process.env.AWS_LAMBDA_RUNTIME_API || '').split(':');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const BASE = '/2018-06-01/runtime';

let requestId = '';

// console, as Lambda's Node.js runtime patches it: text, or JSON (LoggingConfig LogFormat
// JSON) with records below AWS_LAMBDA_LOG_LEVEL (INFO by default) dropped.
const JSON_LOGS = (process.env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'];
const MIN_LEVEL = JSON_LOGS
  ? Math.max(0, LEVELS.indexOf((process.env.AWS_LAMBDA_LOG_LEVEL || 'INFO').toUpperCase()))
  : 0;
for (const [name, level] of [
  ['log', 'INFO'], ['info', 'INFO'], ['warn', 'WARN'], ['error', 'ERROR'],
  ['debug', 'DEBUG'], ['trace', 'TRACE'], ['fatal', 'FATAL'],
]) {
  console[name] = (...args) => {
    if (LEVELS.indexOf(level) < MIN_LEVEL) return;
    const message = util.format(...args);
    if (JSON_LOGS) {
      const record = { timestamp: new Date().toISOString(), level, requestId, message };
      process.stdout.write(JSON.stringify(record) + '\n');
      return;
    }
    process.stdout.write(
      `${new Date().toISOString()}\t${requestId}\t${level}\t${message.replace(/\n/g, '\r')}\n`);
  };
}

function call(method, p, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: apiHost, port: apiPort, path: BASE + p, method, agent, headers: headers || {} },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function errorDoc(err, type) {
  if (err instanceof Error) {
    return {
      errorType: type || err.name || 'Error',
      errorMessage: err.message,
      trace: String(err.stack || '').split('\n'),
    };
  }
  // Lambda's runtime names a thrown non-Error by its type.
  return { errorType: type || typeof err, errorMessage: String(err), trace: [] };
}

function logError(doc) {
  if (JSON_LOGS) {
    process.stdout.write(JSON.stringify({
      timestamp: new Date().toISOString(), level: 'ERROR', requestId, ...doc,
    }) + '\n');
    return;
  }
  const head = `${doc.errorType}: ${doc.errorMessage}`;
  process.stdout.write(
    `${new Date().toISOString()}\t${requestId}\tERROR\t${[head, ...doc.trace.slice(1)].join('\r')}\n`);
}

async function postError(p, doc) {
  logError(doc);
  await call('POST', p, JSON.stringify(doc), {
    'Content-Type': 'application/json',
    'Lambda-Runtime-Function-Error-Type': doc.errorType,
  });
}

class Fault extends Error {
  constructor(type, message) {
    super(message);
    this.faultType = type;
  }
}

async function loadHandler() {
  const spec = process.env._HANDLER || '';
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const dot = spec.lastIndexOf('.');
  if (dot <= 0 || dot === spec.length - 1) {
    throw new Fault('Runtime.MalformedHandlerName', `Bad handler ${spec}`);
  }
  const file = spec.slice(0, dot);
  const name = spec.slice(dot + 1);
  const base = path.resolve(root, file);
  let mod;
  const found = ['.js', '.mjs', '.cjs'].map((e) => base + e).find((f) => fs.existsSync(f));
  try {
    if (found && found.endsWith('.mjs')) {
      mod = await import(pathToFileURL(found).href);
    } else if (found) {
      try {
        mod = require(found);
      } catch (e) {
        // An ES module in a .js file ("type": "module"): imported, as Lambda's runtime does.
        if (!e || (e.code !== 'ERR_REQUIRE_ESM' && e.code !== 'ERR_REQUIRE_ASYNC_MODULE')) throw e;
        mod = await import(pathToFileURL(found).href);
      }
    } else {
      throw new Fault('Runtime.ImportModuleError',
        `Error: Cannot find module '${file}'`);
    }
  } catch (e) {
    if (e instanceof Fault) throw e;
    if (e instanceof SyntaxError) throw new Fault('Runtime.UserCodeSyntaxError', String(e));
    if (e && e.code === 'MODULE_NOT_FOUND') throw new Fault('Runtime.ImportModuleError', String(e));
    throw e;
  }
  const handler = mod[name] !== undefined ? mod[name] : mod.default && mod.default[name];
  if (handler === undefined) {
    throw new Fault('Runtime.HandlerNotFound', `${spec} is undefined or not exported`);
  }
  if (typeof handler !== 'function') {
    throw new Fault('Runtime.HandlerNotFound', `${spec} is not a function`);
  }
  return handler;
}

function context(headers) {
  const env = process.env;
  const deadline = Number(headers['lambda-runtime-deadline-ms']);
  const json = (h) => {
    try { return h ? JSON.parse(h) : undefined; } catch { return undefined; }
  };
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: headers['lambda-runtime-aws-request-id'],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    identity: json(headers['lambda-runtime-cognito-identity']),
    clientContext: json(headers['lambda-runtime-client-context']),
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

// An async handler's promise, or a callback handler's callback (the first of the two).
function run(handler, event, ctx) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err, value) => {
      if (settled) return;
      settled = true;
      if (err !== undefined && err !== null) reject(err); else resolve(value);
    };
    ctx.done = done;
    ctx.succeed = (v) => done(null, v);
    ctx.fail = (e) => done(e === undefined || e === null ? new Error('handled') : e);
    try {
      const r = handler(event, ctx, done);
      if (r && typeof r.then === 'function') {
        r.then((v) => done(null, v), (e) => done(e === undefined || e === null ? new Error('rejected') : e));
      } else if (handler.length < 3) {
        done(null, r);
      }
    } catch (e) {
      done(e);
    }
  });
}

let current = null;
process.on('uncaughtException', async (err) => {
  const doc = errorDoc(err, 'Runtime.UncaughtException');
  if (current) await postError(`/invocation/${current}/error`, doc).catch(() => {});
  else logError(doc);
  process.exit(129);
});
process.on('unhandledRejection', async (reason) => {
  const doc = errorDoc(reason, 'Runtime.UnhandledPromiseRejection');
  if (current) await postError(`/invocation/${current}/error`, doc).catch(() => {});
  else logError(doc);
  process.exit(128);
});

async function main() {
  let handler;
  try {
    handler = await loadHandler();
  } catch (e) {
    await postError('/init/error', errorDoc(e, e instanceof Fault ? e.faultType : undefined));
    process.exit(1);
  }
  for (;;) {
    const next = await call('GET', '/invocation/next');
    const id = next.headers['lambda-runtime-aws-request-id'];
    requestId = id;
    current = id;
    let event;
    try {
      event = JSON.parse(next.body.toString('utf8') || 'null');
    } catch (e) {
      await postError(`/invocation/${id}/error`, errorDoc(e, 'Runtime.UnmarshalError'));
      continue;
    }
    try {
      const result = await run(handler, event, context(next.headers));
      let body;
      try {
        body = JSON.stringify(result === undefined ? null : result);
      } catch (e) {
        await postError(`/invocation/${id}/error`, errorDoc(e, 'Runtime.MarshalError'));
        continue;
      }
      await call('POST', `/invocation/${id}/response`, body, { 'Content-Type': 'application/json' });
    } catch (e) {
      await postError(`/invocation/${id}/error`, errorDoc(e));
    }
    current = null;
  }
}

main();
