// The QMP codec on its own: how a byte stream is cut into messages (as
// QEMU's JSON streamer does, with or without newlines, split anywhere), the
// bounds (message size, nesting) and the checks of a request's shape.
import t from 'tap'
import { QmpDecoder, checkRequest, serialize, eventMessage, errorMessage, returnMessage, type Decoded } from '../../vmm/qmp/codec.js'

const values = (ds: Decoded[]) => ds.map((d) => (d.kind === 'value' ? d.value : `ERR ${d.desc}`))

t.test('messages back to back, with and without newlines, strings holding brackets and escapes', async (t) => {
  const d = new QmpDecoder()
  const text = '{"execute":"a"}{"execute":"b","arguments":{"s":"}{][\\"\\\\"}}\r\n  [1,{"x":[2]}]\n"top" 42 '
  t.same(values(d.feed(Buffer.from(text))), [
    { execute: 'a' }, { execute: 'b', arguments: { s: '}{]["\\' } }, [1, { x: [2] }], 'top', 42,
  ])
  t.equal(d.buffered, 0)
})

t.test('the same stream cut at every byte gives the same messages', async (t) => {
  const text = Buffer.from('{"execute":"a","id":{"n":"é}"}} [true] {"x":"\\u00e9\\""}\n')
  const whole = values(new QmpDecoder().feed(text))
  t.equal(whole.length, 3)
  for (let cut = 1; cut < text.length; cut++) {
    const d = new QmpDecoder()
    t.same([...values(d.feed(text.subarray(0, cut))), ...values(d.feed(text.subarray(cut)))], whole, `cut at ${cut}`)
  }
  // One byte at a time, a UTF-8 character split across chunks included.
  const d = new QmpDecoder()
  const got: unknown[] = []
  for (const b of text) got.push(...values(d.feed(Buffer.from([b]))))
  t.same(got, whole)
})

t.test('invalid JSON: an error per bad message, and the stream goes on', async (t) => {
  const d = new QmpDecoder()
  const out = values(d.feed(Buffer.from('{bad} } foo {"execute":"ok"} [1,,2] nul\n')))
  t.equal(out.length, 6)
  t.match(out[0], /^ERR JSON parse error/)
  t.equal(out[1], "ERR JSON parse error, stray '}'")
  t.match(out[2], /^ERR JSON parse error/)
  t.same(out[3], { execute: 'ok' })
  t.match(out[4], /^ERR JSON parse error/)
  t.match(out[5], /^ERR JSON parse error/)
})

t.test('a message over the size limit: one error, nothing stored, the next message read', async (t) => {
  const d = new QmpDecoder({ maxMessageBytes: 1024 })
  const big = Buffer.from(`{"execute":"x","arguments":{"s":"${'a'.repeat(8 << 20)}"}}`)
  const out: Decoded[] = []
  for (let i = 0; i < big.length; i += 65536) {
    out.push(...d.feed(big.subarray(i, i + 65536)))
    t.ok(d.buffered <= 1024, 'never holds more than the limit')
  }
  out.push(...d.feed(Buffer.from('{"execute":"after"}')))
  t.same(values(out), ['ERR QMP input exceeds 1024 bytes', { execute: 'after' }])
  // A bare token without end is bounded too.
  const e = new QmpDecoder({ maxMessageBytes: 64 })
  t.same(values(e.feed(Buffer.from(`${'x'.repeat(1000)} {"a":1}`))), ['ERR QMP input exceeds 64 bytes', { a: 1 }])
})

t.test('nesting deeper than the limit is refused without parsing it', async (t) => {
  const d = new QmpDecoder({ maxNesting: 32 })
  const deep = Buffer.from(`${'['.repeat(100000)}${']'.repeat(100000)}{"execute":"x"}`)
  t.same(values(d.feed(deep)), ['ERR JSON nesting depth limit exceeded (32)', { execute: 'x' }])
  t.same(values(d.feed(Buffer.from('[[[1]]]'))), [[[[1]]]])
})

t.test('bad limits are refused', async (t) => {
  t.throws(() => new QmpDecoder({ maxMessageBytes: 0 }), RangeError)
  t.throws(() => new QmpDecoder({ maxNesting: -1 }), RangeError)
})

t.test("a request's shape: QEMU's checks and messages", async (t) => {
  t.same(checkRequest({ execute: 'query-status' }), { ok: true, request: { execute: 'query-status', arguments: {}, id: undefined, hasId: false } })
  t.same(checkRequest({ execute: 'x', arguments: { a: 1 }, id: [1] }), { ok: true, request: { execute: 'x', arguments: { a: 1 }, id: [1], hasId: true } })
  const bad: [unknown, string][] = [
    [[1], 'QMP input must be a JSON object'],
    ['s', 'QMP input must be a JSON object'],
    [null, 'QMP input must be a JSON object'],
    [{}, "QMP input lacks member 'execute'"],
    [{ execute: 1 }, "QMP input member 'execute' must be a string"],
    [{ execute: 'x', arguments: [] }, "QMP input member 'arguments' must be an object"],
    [{ execute: 'x', arguments: null }, "QMP input member 'arguments' must be an object"],
    [{ execute: 'x', 'exec-oob': 'y' }, "QMP input member 'exec-oob' is unexpected"],
  ]
  for (const [v, desc] of bad) t.match(checkRequest(v), { ok: false, desc }, desc)
  t.match(checkRequest({ id: 7, execute: 3 }), { ok: false, id: 7, hasId: true })
})

t.test('serializing: one line each, the id echoed only when given, QEMU time stamps', async (t) => {
  t.equal(serialize(returnMessage({})).toString(), '{"return":{}}\r\n')
  t.same(returnMessage(1, { id: 'a', hasId: true }), { return: 1, id: 'a' })
  t.same(returnMessage(1, { id: undefined, hasId: true }), { return: 1, id: undefined })
  t.same(errorMessage('CommandNotFound', 'd', { id: null, hasId: true }), { error: { class: 'CommandNotFound', desc: 'd' }, id: null })
  const e = eventMessage('STOP', undefined, 1234567.891)
  t.same(e, { timestamp: { seconds: 1234, microseconds: 567891 }, event: 'STOP' })
  t.notOk('data' in e)
})
