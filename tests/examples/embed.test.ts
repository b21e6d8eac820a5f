import t from 'tap'
import { main } from '../../examples/embed.js'

t.test('the embedding example migrates its VM and proves the state arrived', async t => {
  const r = await main()
  t.ok(r.ok, r.report)
  t.match(r.report, /status completed/)
})
