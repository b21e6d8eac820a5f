// QMP, QEMU's monitor protocol, for a VM that embeds this library (docs/qmp.md).
export { QmpServer, type QmpServerOptions } from './server.js'
export { MigrationControl, SUPPORTED_CAPABILITIES, type MigrationControlOptions, type QmpCapability, type QmpRamSource } from './control.js'
export {
  QmpDecoder, QmpError, checkRequest, serialize, eventMessage, errorMessage, returnMessage, timestamp,
  DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_NESTING, type Decoded, type DecoderOptions, type QmpRequest, type QmpErrorClass,
} from './codec.js'
