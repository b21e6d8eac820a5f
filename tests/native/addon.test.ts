import t from 'tap'
import { native } from '../../vmm/native/addon.js'

t.test('the addon loads and reports its version', async t => {
  t.match(native.nativeVersion(), /^\d+\.\d+\.\d+$/)
})
