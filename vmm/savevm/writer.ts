// Serializer for the framing of QEMU's migration stream.
import type { MigStream } from '../stream/stream.js'
import {
  QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, QEMU_VM_CONFIGURATION, QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL,
  QEMU_VM_SECTION_FOOTER, QEMU_VM_COMMAND, QEMU_VM_EOF, QEMU_VM_VMDESCRIPTION, MIG_CMD_LEN, MIG_CMD_NAME,
} from './constants.js'
import { SaveError } from './errors.js'
import { saveState } from '../vmstate/save.js'
import type { VmdescVmsd } from '../vmstate/types.js'
import { configurationVmsd, configurationState, type Configuration } from './configuration.js'

export function writeHeader(f: MigStream): void {
  f.putBe32(QEMU_VM_FILE_MAGIC)
  f.putBe32(QEMU_VM_FILE_VERSION)
}

/** The stream's first 8 bytes (magic, version), for a caller that sends them ahead (SaveOptions.fileHeaderSent). */
export function fileHeader(): Buffer {
  const b = Buffer.alloc(8)
  b.writeUInt32BE(QEMU_VM_FILE_MAGIC, 0)
  b.writeUInt32BE(QEMU_VM_FILE_VERSION, 4)
  return b
}

/** 0x07 + the configuration vmstate; resolves its vmdesc. */
export async function writeConfiguration(f: MigStream, c: Configuration): Promise<VmdescVmsd> {
  f.putU8(QEMU_VM_CONFIGURATION)
  return saveState(f, configurationVmsd(), configurationState(c))
}

/** START/FULL carry idstr, instance and version; PART/END only the section id. */
export function writeSectionHeader(
  f: MigStream, type: number, sectionId: number, idstr?: string, instanceId?: number, versionId?: number,
): void {
  f.putU8(type)
  f.putBe32(sectionId)
  if (type === QEMU_VM_SECTION_START || type === QEMU_VM_SECTION_FULL) {
    f.putCountedString(idstr ?? '')
    f.putBe32(instanceId ?? 0)
    f.putBe32(versionId ?? 0)
  }
}

export function writeFooter(f: MigStream, sectionId: number): void {
  f.putU8(QEMU_VM_SECTION_FOOTER)
  f.putBe32(sectionId)
}

export function writeCommand(f: MigStream, cmd: number, data: Uint8Array = Buffer.alloc(0)): void {
  const want = MIG_CMD_LEN[cmd]
  if (want === undefined) throw new SaveError('ERR_SAVEVM_BAD_COMMAND', `unknown command ${cmd}`)
  if (want >= 0 && data.length !== want) {
    throw new SaveError('ERR_SAVEVM_BAD_COMMAND', `${MIG_CMD_NAME[cmd]} takes ${want} bytes of data, got ${data.length}`)
  }
  if (data.length > 0xffff) throw new SaveError('ERR_SAVEVM_BAD_COMMAND', `command data of ${data.length} bytes exceeds 65535`)
  f.putU8(QEMU_VM_COMMAND)
  f.putBe16(cmd)
  f.putBe16(data.length)
  f.putBuffer(data)
}

export function writeEof(f: MigStream): void {
  f.putU8(QEMU_VM_EOF)
}

export function writeVmdesc(f: MigStream, desc: unknown): void {
  const json = Buffer.from(JSON.stringify(desc), 'utf8')
  f.putU8(QEMU_VM_VMDESCRIPTION)
  f.putBe32(json.length)
  f.putBufferAsync(json)
}
