export type {
  VMStateDescription, VMStateField, ScalarField, BufferField, StructField, ScalarType, State, VmdescField, VmdescVmsd,
} from './types.js'
export { SCALAR_SIZE, DEFAULT_MAX_COUNT, DEFAULT_MAX_LENGTH } from './types.js'
export { saveState, canCompress } from './save.js'
export { loadState, type LoadContext } from './load.js'
export { validateVmsd, countOf, lengthOf } from './layout.js'
