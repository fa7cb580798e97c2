// The reference for the differential mapping test: Segment's published Amplitude (Actions)
// destination, fed one case per stdin line ({"config": {"amplitude": {...}}, "event": {...}}),
// answering one line per case in the shape of the conformance cases' "expected":
// {"requests": [{method, url, headers: {"content-type"}, body, decoded_body?}], "error": null | "<status> <message>"}.
// No network: the fetch that actions-core calls is replaced before the destination loads, and
// answers 200 to every request after recording it. Written for edgeproxy's tests; nothing here
// comes from the destination's source except its public entry points.
'use strict'

const path = require('path')
const readline = require('readline')
// The fetch module by file (the package's exports map hides it): the same module instance
// the destination's request client calls, so replacing its default export reaches it.
const fetchModule = require(path.join(path.dirname(require.resolve('@segment/actions-core')), 'fetch.js'))
const { Destination, defaultValues } = require('@segment/actions-core')

let recorded = []

fetchModule.default = async function recordingFetch(request) {
  const body = await request.text()
  recorded.push({
    method: request.method,
    url: request.url,
    contentType: request.headers.get('content-type') || '',
    body
  })
  return new fetchModule.Response('{"code":200,"events_ingested":1}', {
    status: 200,
    headers: { 'content-type': 'application/json' }
  })
}

const definition = require('@segment/action-destinations/dist/destinations/amplitude').default
const destination = new Destination(definition)

const FORM_JSON_FIELDS = ['identification', 'mapping', 'options']

function readable(request) {
  const out = { method: request.method, url: request.url, headers: { 'content-type': request.contentType } }
  if (request.contentType.startsWith('application/json')) {
    out.body = JSON.parse(request.body)
  } else {
    const form = Object.fromEntries(new URLSearchParams(request.body))
    out.body = request.body
    const decoded = { ...form }
    for (const key of FORM_JSON_FIELDS) {
      if (typeof decoded[key] === 'string') {
        try {
          decoded[key] = JSON.parse(decoded[key])
        } catch (e) {
          // kept as the string the reference sent (e.g. "undefined")
        }
      }
    }
    out.decoded_body = decoded
  }
  return out
}

function settingsOf(amplitude) {
  const subscriptions = (amplitude.subscriptions || []).filter((s) => s.enabled !== false).map((s) => {
    const action = definition.actions[s.action]
    const defaults = action ? defaultValues(action.fields) : {}
    return {
      partnerAction: s.action,
      name: s.name,
      subscribe: s.subscribe,
      mapping: s.replace_mapping ? s.mapping || {} : { ...defaults, ...(s.mapping || {}) }
    }
  })
  const settings = { subscriptions }
  if (amplitude.api_key !== undefined) settings.apiKey = amplitude.api_key
  if (amplitude.secret_key !== undefined) settings.secretKey = amplitude.secret_key
  if (amplitude.region !== undefined) settings.endpoint = amplitude.region
  return settings
}

async function run(testCase) {
  recorded = []
  let error = null
  try {
    const results = await destination.onEvent(testCase.event, settingsOf(testCase.config.amplitude))
    for (const result of results || []) {
      if (result && result.error) error = `${result.error.status || 400} ${result.error.message}`
    }
  } catch (err) {
    error = `${err.status || 500} ${err.message}`
    if (process.env.RUNNER_DEBUG) process.stderr.write(String(err.stack) + '\n')
  }
  return { requests: recorded.map(readable), error }
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line.trim()) continue
    let answer
    try {
      answer = await run(JSON.parse(line))
    } catch (err) {
      answer = { requests: [], error: `runner: ${err.message}` }
    }
    process.stdout.write(JSON.stringify(answer) + '\n')
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack) + '\n')
  process.exit(1)
})
