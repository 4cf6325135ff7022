#!/usr/bin/env node
/*
 * lifeline verb validator
 *
 * Runs the exact checks the jambonz feature-server applies to every verb array
 * it receives (ack to session:new / verb:hook, `redirect` command, REST call_hook):
 *
 *   normalizeJambones(logger, verbs).map((tdata) => makeTask(logger, tdata))
 *
 * where makeTask() requires each normalized item to be `{<name>: <object>}` and then
 * calls `validateVerb(name, data, logger)` from @jambonz/verb-specifications.
 *
 * Input  (stdin): a JSON array of verb arrays, e.g.
 *                 [[{"verb":"answer"},{"verb":"hangup"}], [{"verb":"say","text":"hi"}]]
 *                 An element that is `null` means "empty ack" and is skipped.
 *                 An empty array (or any non-array element) is invalid.
 * Output (stdout, one JSON line):
 *                 {"ok":true,"checked":N}            N = number of verb arrays validated (nulls excluded)
 *                 {"ok":false,"errors":[{"index":i,"verbs":<array>,"error":"<message>"}]}
 * Exit code:      0 all valid, 1 at least one invalid, 2 unreadable input
 *                 (unreadable input still prints {"ok":false,"errors":[{"index":null,"verbs":null,"error":...}]}).
 */
'use strict';

const {normalizeJambones, validateVerb} = require('@jambonz/verb-specifications');

const noop = () => {};
const quietLogger = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  fatal: noop,
  child() { return quietLogger; },
};

/* mirrors feature-server lib/tasks/make_task.js (minus task construction) */
function checkNormalizedTask(tdata) {
  const keys = tdata && typeof tdata === 'object' ? Object.keys(tdata) : [];
  if (keys.length !== 1) throw new Error('invalid instruction payload');
  const name = keys[0];
  const data = tdata[name];
  if (typeof data !== 'object') throw new Error('invalid instruction payload');
  validateVerb(name, data, quietLogger);
}

function checkVerbArray(verbs) {
  if (!Array.isArray(verbs) || verbs.length === 0) {
    throw new Error('must be a non-empty verb array');
  }
  const normalized = normalizeJambones(quietLogger, verbs);
  for (const tdata of normalized) checkNormalizedTask(tdata);
}

function errorMessage(err) {
  if (err && typeof err.message === 'string' && err.message.length > 0) return err.message;
  return String(err);
}

function emit(obj, code) {
  process.exitCode = code;
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fatal(msg) {
  emit({ok: false, errors: [{index: null, verbs: null, error: `unreadable input: ${msg}`}]}, 2);
}

function run(text) {
  let input;
  try {
    input = JSON.parse(text);
  } catch (err) {
    return fatal(`invalid JSON: ${errorMessage(err)}`);
  }
  if (!Array.isArray(input)) {
    return fatal('expected a JSON array of verb arrays');
  }

  let checked = 0;
  const errors = [];
  input.forEach((verbs, index) => {
    if (verbs === null) return; /* empty ack: nothing to validate */
    checked++;
    try {
      checkVerbArray(verbs);
    } catch (err) {
      errors.push({index, verbs, error: errorMessage(err)});
    }
  });

  if (errors.length > 0) emit({ok: false, errors}, 1);
  else emit({ok: true, checked}, 0);
}

const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('error', (err) => fatal(`cannot read stdin: ${errorMessage(err)}`));
process.stdin.on('end', () => {
  try {
    run(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    /* should not happen; never let an unexpected exception look like "valid" */
    fatal(`internal error: ${errorMessage(err)}`);
  }
});
