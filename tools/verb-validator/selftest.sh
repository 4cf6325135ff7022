#!/usr/bin/env bash
# Self-test for tools/verb-validator/validate.js.
# Exits non-zero on any unexpected outcome. Requires `npm ci` to have been run in this directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
validator="$here/validate.js"

if [[ ! -d "$here/node_modules/@jambonz/verb-specifications" ]]; then
  echo "selftest: $here/node_modules is missing; run: npm ci --prefix '$here'" >&2
  exit 1
fi

failures=0
total=0

# expect <name> <expected-exit-code> <json-input> [<substring expected in stdout>]
expect() {
  local name="$1" want="$2" input="$3" needle="${4:-}"
  local out rc
  total=$((total + 1))
  set +e
  out="$(printf '%s' "$input" | node "$validator")"
  rc=$?
  set -e
  if [[ "$rc" != "$want" ]]; then
    echo "FAIL $name: exit $rc, expected $want; output: $out" >&2
    failures=$((failures + 1))
    return 0
  fi
  if [[ -n "$needle" && "$out" != *"$needle"* ]]; then
    echo "FAIL $name: output lacks '$needle'; output: $out" >&2
    failures=$((failures + 1))
    return 0
  fi
  if [[ "$(printf '%s\n' "$out" | wc -l)" != 1 ]]; then
    echo "FAIL $name: expected exactly one line on stdout; output: $out" >&2
    failures=$((failures + 1))
    return 0
  fi
  echo "ok   $name" >&2
}

LLM='{"verb":"llm","vendor":"ultravox","model":"fixie-ai/ultravox","auth":{"apiKey":"UV_KEY"},"actionHook":"/final","eventHook":"/event","toolHook":"/toolCall","events":["createCall","state","transcript"],"llmOptions":{"systemPrompt":"You are a helpful agent.","firstSpeaker":"FIRST_SPEAKER_AGENT","voice":"Mark","selectedTools":[{"temporaryTool":{"modelToolName":"transfer_call","description":"Transfer","dynamicParameters":[{"name":"reason","location":"PARAMETER_LOCATION_BODY","required":true,"schema":{"type":"string","description":"why"}}],"client":{}}}]}}'
VALID_LLM="[{\"verb\":\"answer\"},$LLM,{\"verb\":\"hangup\"}]"
VALID_DIAL='[{"verb":"say","text":"Please hold while I connect you"},{"verb":"dial","actionHook":"/dialAction","callerId":"+15551230000","timeout":30,"target":[{"type":"phone","number":"+15557654321","trunk":"MyCarrier"}]}]'

# --- required cases -----------------------------------------------------------
expect "valid answer+llm(ultravox)+hangup" 0 "[$VALID_LLM]" '{"ok":true,"checked":1}'
expect "valid say+dial(phone)"             0 "[$VALID_DIAL]" '{"ok":true,"checked":1}'
expect "valid batch of two"                0 "[$VALID_LLM,$VALID_DIAL]" '{"ok":true,"checked":2}'
expect "null element = empty ack, skipped" 0 "[null,$VALID_DIAL,null]" '{"ok":true,"checked":1}'
expect "all-null batch"                    0 '[null]' '{"ok":true,"checked":0}'
expect "empty outer array"                 0 '[]' '{"ok":true,"checked":0}'

expect "invalid: llm without llmOptions" 1 \
  '[[{"verb":"llm","vendor":"ultravox","auth":{"apiKey":"k"}}]]' 'llm: missing value for llmOptions'
expect "invalid: dial target type pstn" 1 \
  '[[{"verb":"dial","target":[{"type":"pstn","number":"+15557654321"}]}]]' 'invalid value pstn'
expect "invalid: unknown property" 1 \
  '[[{"verb":"say","text":"hi","voice":"x"}]]' 'say: unknown property voice'
expect "invalid: empty verb array" 1 '[[]]' 'must be a non-empty verb array'
expect "invalid: element not an array" 1 '[{"verb":"hangup"}]' 'must be a non-empty verb array'
expect "invalid: unknown verb" 1 '[[{"verb":"nosuchverb"}]]' 'invalid instruction: nosuchverb'
expect "invalid: verb data not an object" 1 '[[{"hangup":"x"}]]' 'invalid instruction payload'
expect "invalid: reports the right index" 1 "[$VALID_DIAL,null,[{\"verb\":\"pause\"}]]" '"index":2'

expect "unreadable: not JSON"        2 'not json' 'unreadable input'
expect "unreadable: not an array"    2 '{"verb":"hangup"}' 'unreadable input'
expect "unreadable: empty stdin"     2 '' 'unreadable input'

# --- pinned behaviour of @jambonz/verb-specifications 0.1.13 (documents what jambonz accepts) ---
expect "accepts: phone target with confirmHook" 0 \
  '[[{"verb":"dial","target":[{"type":"phone","number":"+15557654321","trunk":"MyCarrier","confirmHook":"/dial-confirm"}]}]]'
expect "accepts: dial with dialMusic" 0 \
  '[[{"verb":"dial","dialMusic":"https://example.com/ring.mp3","target":[{"type":"phone","number":"+15557654321"}]}]]'
expect "accepts: say with text only"      0 '[[{"verb":"say","text":"hello"}]]'
expect "accepts: hangup"                  0 '[[{"verb":"hangup"}]]'
expect "accepts: pause length 1"          0 '[[{"verb":"pause","length":1}]]'
expect "accepts: phone target w/o trunk"  0 '[[{"verb":"dial","target":[{"type":"phone","number":"+15557654321"}]}]]'
expect "accepts: llm auth with agent_id"  0 \
  '[[{"verb":"llm","vendor":"ultravox","auth":{"apiKey":"k","agent_id":"abc"},"llmOptions":{}}]]'
expect "accepts: llmOptions templateContext+metadata" 0 \
  '[[{"verb":"llm","vendor":"ultravox","auth":{"apiKey":"k"},"llmOptions":{"systemPrompt":"x","templateContext":{"a":"b"},"metadata":{"c":"d"}}}]]'
expect "accepts: sip:decline 480"         0 '[[{"verb":"sip:decline","status":480,"reason":"Not found"}]]'
expect "accepts: ultravox_s2s alias"      0 '[[{"verb":"ultravox_s2s","auth":{"apiKey":"k"},"llmOptions":{}}]]'
expect "accepts: {name:{...}} form"       0 '[[{"hangup":{}}]]'
expect "rejects: pause without length"    1 '[[{"verb":"pause"}]]' 'pause: missing value for length'
expect "rejects: dial without target"     1 '[[{"verb":"dial","callerId":"+15551230000"}]]' 'dial: missing value for target'
expect "rejects: timeout as string"       1 \
  '[[{"verb":"dial","timeout":"30","target":[{"type":"phone","number":"+1"}]}]]' 'dial: property timeout has invalid data type'

if [[ "$failures" -ne 0 ]]; then
  echo "verb-validator selftest: $failures of $total cases FAILED" >&2
  exit 1
fi
echo "verb-validator selftest: all $total cases passed" >&2
