// Every error class the library throws for a reason of its own has one base,
// VmmError, and a string code: an embedder tells them from bugs with one
// instanceof and branches on code.
import t from 'tap'
import { VmmError } from '../../vmm/core/errors.js'
import { MachineError } from '../../vmm/machine/workload.js'
import { InvalidTransitionError, TransitionError, ReentrantTransitionError } from '../../vmm/runstate/vm.js'
import { VfioMigrationError } from '../../vmm/vfio/device-migration.js'
import { IntegrityError, ProofSectionError } from '../../vmm/microvm/proof.js'
import { CpuSectionError } from '../../vmm/microvm/cpu-section.js'
import { AnalyzeError } from '../../vmm/cli/file-reader.js'
import { UsageError } from '../../vmm/cli/args.js'
import { LoadError, SaveError } from '../../vmm/savevm/errors.js'
import { QmpError } from '../../vmm/qmp/codec.js'
import { MigrationError } from '../../vmm/migration/errors.js'
import { StreamError } from '../../vmm/stream/errors.js'
import * as root from '../../vmm/index.js'

const made: Error[] = [
  new MachineError('m', 22),
  new InvalidTransitionError('running', 'prelaunch'),
  new TransitionError('running', 'paused', 'n', 'main', new Error('x'), []),
  new ReentrantTransitionError('running', 'paused', 'running'),
  new VfioMigrationError('v', 'EIO'),
  new IntegrityError('RAM', 'a', 'b'),
  new ProofSectionError('p'),
  new CpuSectionError('c'),
  new AnalyzeError('a', 4),
  new UsageError('u'),
  new LoadError('ERR_SAVEVM_TRUNCATED', 5, 'l'),
  new SaveError('ERR_SAVEVM_SAVE', 's'),
  new QmpError('GenericError', 'q'),
  new MigrationError('mig', 'ETIMEDOUT'),
  new StreamError('EPIPE', 's'),
]

t.test('every error class of the library is a VmmError with a string code', async (t) => {
  for (const e of made) {
    t.ok(e instanceof VmmError, `${e.name} is a VmmError`)
    t.ok(e instanceof Error, `${e.name} is an Error`)
    t.type((e as VmmError).code, 'string', `${e.name} has a string code (${(e as VmmError).code})`)
  }
  t.equal(root.VmmError, VmmError, 'exported by the package root')
  t.notOk(new Error('plain') instanceof VmmError, 'a plain Error is not')
})
