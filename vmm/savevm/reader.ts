// Parser for the framing of QEMU's migration stream. Each function reads one
// element and throws a typed LoadError on anything unexpected.
import type { MigStream } from '../stream/stream.js'
import {
  QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, QEMU_VM_FILE_VERSION_COMPAT, QEMU_VM_SECTION_FOOTER, QEMU_VM_VMDESCRIPTION,
  MIG_CMD_LEN, MIG_CMD_NAME,
} from './constants.js'
import {
  BadMagicError, UnsupportedVersionError, FooterMismatchError, BadCommandError, LengthLimitError, VmdescError, TruncatedError,
} from './errors.js'
import { need, streamFailure } from './fail.js'

export async function readHeader(f: MigStream): Promise<void> {
  if (!(await f.fill(8))) {
    // Not one byte: a source that gave up before it began (cancelled while it
    // built its guest, say), not a stream cut short. A reset says the same: a
    // socket closed with unread data in it (the return path's first message)
    // resets the connection.
    const closed = f.error?.code === 'ENODATA' || f.error?.code === 'ECONNRESET'
    if (closed && f.bytesRead === 0 && f.available === 0) {
      throw new TruncatedError('empty stream: the source closed the channel before sending anything', { section: 'header', offset: 0, cause: f.error })
    }
    throw streamFailure(f, 'header', 'file header')
  }
  const magic = f.be32()
  if (magic !== QEMU_VM_FILE_MAGIC) {
    throw new BadMagicError(`magic 0x${magic.toString(16).padStart(8, '0')} is not QEVM (0x5145564d)`, { section: 'header', offset: 0 })
  }
  const version = f.be32()
  if (version === QEMU_VM_FILE_VERSION_COMPAT) {
    throw new UnsupportedVersionError('stream format version 2 is obsolete', { section: 'header', offset: 4 })
  }
  if (version !== QEMU_VM_FILE_VERSION) {
    throw new UnsupportedVersionError(`stream format version ${version} is not 3`, { section: 'header', offset: 4 })
  }
}

export interface SectionStart {
  sectionId: number
  idstr: string
  instanceId: number
  versionId: number
}

export async function readSectionStart(f: MigStream): Promise<SectionStart> {
  const at = f.bytesRead
  await need(f, 5, `at ${at}`, 'section header')
  const sectionId = f.be32()
  const len = f.peekU8()
  await need(f, 1 + len + 8, `id ${sectionId}`, 'section header')
  f.u8()
  const idstr = f.view(len).toString('latin1')
  const instanceId = f.be32()
  const versionId = f.be32()
  return { sectionId, idstr, instanceId, versionId }
}

export async function readSectionId(f: MigStream): Promise<number> {
  await need(f, 4, undefined, 'section id')
  return f.be32()
}

export async function readFooter(f: MigStream, sectionId: number, section: string): Promise<void> {
  const at = f.bytesRead
  await need(f, 5, section, 'section footer')
  const mark = f.u8()
  if (mark !== QEMU_VM_SECTION_FOOTER) {
    throw new FooterMismatchError(`expected footer 0x7e after the section, found 0x${mark.toString(16).padStart(2, '0')} (the handler read too little or too much)`, { section, offset: at })
  }
  const id = f.be32()
  if (id !== sectionId) {
    throw new FooterMismatchError(`footer names section ${id}, expected ${sectionId}`, { section, offset: at })
  }
}

export interface Command {
  cmd: number
  name: string
  data: Buffer
}

export async function readCommand(f: MigStream): Promise<Command> {
  const at = f.bytesRead - 1
  await need(f, 4, 'command', 'command header')
  const cmd = f.be16()
  const len = f.be16()
  const want = MIG_CMD_LEN[cmd]
  if (want === undefined) throw new BadCommandError(`unknown command ${cmd}`, { section: 'command', offset: at })
  if (want >= 0 && len !== want) {
    throw new BadCommandError(`${MIG_CMD_NAME[cmd]} must carry ${want} bytes, header says ${len}`, { section: 'command', offset: at })
  }
  await need(f, len, `command ${MIG_CMD_NAME[cmd]}`, 'command data')
  return { cmd, name: MIG_CMD_NAME[cmd], data: f.bytes(len) }
}

/** The VMDESCRIPTION that may follow EOF: its JSON bytes, unparsed, and where they start. */
export async function readVmdesc(f: MigStream, maxLength: number): Promise<{ bytes: Buffer; offset: number }> {
  const at = f.bytesRead
  await need(f, 5, 'vmdesc', 'vmdesc header')
  const t = f.u8()
  if (t !== QEMU_VM_VMDESCRIPTION) throw new VmdescError(`expected 0x06 after EOF, found 0x${t.toString(16)}`, { section: 'vmdesc', offset: at })
  const len = f.be32()
  if (len > maxLength) throw new LengthLimitError(`vmdesc of ${len} bytes exceeds the ${maxLength} limit`, { section: 'vmdesc', offset: at })
  const bytes = await f.getBuffer(len)
  if (f.error) throw streamFailure(f, 'vmdesc', 'vmdesc JSON')
  return { bytes, offset: at + 5 }
}

/** The vmdesc's JSON value; a VmdescError when it is not JSON. */
export function parseVmdesc(raw: { bytes: Buffer; offset: number }): unknown {
  try {
    return JSON.parse(raw.bytes.toString('utf8'))
  } catch (e) {
    throw new VmdescError(`vmdesc is not JSON: ${(e as Error).message}`, { section: 'vmdesc', offset: raw.offset, cause: e })
  }
}
