// The destination side: loadvm() reads a whole stream, dispatching sections to
// the registry's handlers by section id, checking every footer, handling
// commands, and returning after EOF (and the vmdesc that follows it).
import type { MigStream } from '../stream/stream.js'
import {
  QEMU_VM_EOF, QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END, QEMU_VM_SECTION_FULL,
  QEMU_VM_COMMAND, QEMU_VM_CONFIGURATION, MigCmd, CANCEL_PING,
} from './constants.js'
import {
  LoadError, ConfigurationError, UnknownSectionTypeError, UnknownSectionIdError, UnknownIdstrError,
  VersionTooNewError, TrailingGarbageError, HandlerError, BadCommandError, MissingSectionError, MigrationCancelledError,
} from './errors.js'
import { need, streamFailure } from './fail.js'
import { readHeader, readSectionStart, readSectionId, readFooter, readCommand, readVmdesc, parseVmdesc, type Command } from './reader.js'
import { requiredInStream, type SaveVMRegistry, type SaveStateEntry, type LoadHandlerContext } from './registry.js'
import { loadState } from '../vmstate/load.js'
import { configurationVmsd, receivedCapabilities } from './configuration.js'

export interface LoadOptions {
  /** Expected machine type; a different one in the stream is an error. */
  machine?: string
  /** Expected target page bits; checked when the stream sends them. */
  targetPageBits?: number
  /**
   * Capabilities enabled here that both ends must agree on; checked against
   * the configuration's capabilities subsection (absent = none on the source).
   * Omitted: not checked.
   */
  capabilities?: string[]
  /**
   * Capabilities the source may list or not, as it chooses (LoadResult.capabilities
   * says which it did); any other one it lists that `capabilities` lacks is refused.
   */
  optionalCapabilities?: string[]
  /** The stream starts with a configuration section (default true). */
  expectConfiguration?: boolean
  /** Read the VMDESCRIPTION after EOF (default true). */
  vmdesc?: boolean
  /**
   * Largest vmdesc accepted (default 1 MiB; QEMU's for a q35 machine with
   * virtio, e1000e and USB is 99 KB). The bytes are kept as they came and
   * parsed only when LoadResult.vmdesc is read, never during the load.
   */
  maxVmdescLength?: number
  /**
   * After the end, insist the peer closes with nothing more (default: only
   * for file channels, since a socket stays open for the return path).
   */
  strictEnd?: boolean
  /** Every command, after built-in handling. */
  onCommand?(c: Command): void | Promise<void>
  /** Called once when every device that needs it has approved switchover. */
  onSwitchoverAck?(): void | Promise<void>
}

export interface LoadResult {
  machine?: string
  targetPageBits?: number
  /** The capabilities the source listed in the configuration section. */
  capabilities?: string[]
  /**
   * The VMDESCRIPTION's JSON, parsed when first read (a VmdescError then if
   * it is not JSON); undefined when the stream had none.
   */
  readonly vmdesc?: unknown
  sections: number
  /**
   * Each kind of command received, in order of first arrival, with how many
   * came and their payload bytes: bounded however many arrive.
   */
  commands: { cmd: number; name: string; count: number; bytes: number }[]
}

export const DEFAULT_MAX_VMDESC = 1 << 20

const MAX_SECTIONS_IN_FLIGHT = 1 << 16

class Loader {
  private readonly bySection = new Map<number, { entry: SaveStateEntry; versionId: number; name: string }>()
  private ackPending = 0
  private ackSent = false
  readonly result: LoadResult = { sections: 0, commands: [] }

  constructor(private readonly f: MigStream, private readonly reg: SaveVMRegistry, private readonly opts: LoadOptions) {}

  private async maybeAck(): Promise<void> {
    if (this.ackSent || this.ackPending > 0 || !this.opts.onSwitchoverAck) return
    this.ackSent = true
    await this.opts.onSwitchoverAck()
  }

  private ctx(sectionId: number, versionId: number, entry: SaveStateEntry): LoadHandlerContext {
    let approved = false
    return {
      sectionId,
      versionId,
      approveSwitchover: () => {
        if (approved || !entry.handlers.switchoverAckNeeded?.()) return
        approved = true
        this.ackPending--
        this.pendingAck = true
      },
    }
  }
  private pendingAck = false

  async configuration(): Promise<void> {
    const at = this.f.bytesRead
    await need(this.f, 1, 'configuration', 'configuration section')
    const t = this.f.u8()
    if (t !== QEMU_VM_CONFIGURATION) {
      throw new ConfigurationError(`expected configuration section (0x07), found 0x${t.toString(16)}`, { section: 'configuration', offset: at })
    }
    const state: Record<string, unknown> = {}
    await loadState(this.f, configurationVmsd(), state, 1, { section: 'configuration' })
    const machine = (state.name as Buffer).toString('utf8')
    this.result.machine = machine
    if (this.opts.machine !== undefined && machine !== this.opts.machine) {
      throw new ConfigurationError(`machine type received is '${machine}', local is '${this.opts.machine}'`, { section: 'configuration', offset: at })
    }
    this.result.capabilities = receivedCapabilities(state)
    if (this.opts.capabilities) {
      const theirs = this.result.capabilities
      for (const c of theirs) {
        if (!this.opts.capabilities.includes(c) && !this.opts.optionalCapabilities?.includes(c)) {
          throw new ConfigurationError(`capability '${c}' is on at the source but off here`, { section: 'configuration', offset: at })
        }
      }
      for (const c of this.opts.capabilities) {
        if (!theirs.includes(c)) {
          throw new ConfigurationError(`capability '${c}' is on here but off at the source`, { section: 'configuration', offset: at })
        }
      }
    }
    if (state.target_page_bits !== undefined) {
      this.result.targetPageBits = state.target_page_bits as number
      if (this.opts.targetPageBits !== undefined && state.target_page_bits !== this.opts.targetPageBits) {
        throw new ConfigurationError(`target page bits received ${String(state.target_page_bits)}, local ${this.opts.targetPageBits}`, { section: 'configuration', offset: at })
      }
    }
  }

  private async runHandler(name: string, fn: () => unknown): Promise<void> {
    try {
      await fn()
    } catch (e) {
      if (e instanceof LoadError) throw e
      throw new HandlerError(`${name}: ${(e as Error)?.message ?? String(e)}`, { section: name, offset: this.f.bytesRead, cause: e })
    }
  }

  private async loadSection(entry: SaveStateEntry, type: number, sectionId: number, versionId: number, name: string): Promise<void> {
    if (type === QEMU_VM_SECTION_FULL && entry.vmsd) {
      await loadState(this.f, entry.vmsd, entry.state!, versionId, { section: name })
    } else if (entry.handlers.loadState) {
      const h = entry.handlers.loadState
      await this.runHandler(name, () => h.call(entry.handlers, this.f, this.ctx(sectionId, versionId, entry)))
    } else {
      throw new HandlerError(`${name} has no load handler`, { section: name, offset: this.f.bytesRead })
    }
    if (this.f.error) {
      throw streamFailure(this.f, name, 'section data')
    }
    await readFooter(this.f, sectionId, name)
    if (this.pendingAck) {
      this.pendingAck = false
      await this.maybeAck()
    }
  }

  async setup(): Promise<void> {
    for (const e of this.reg.entries()) {
      if (e.handlers.switchoverAckNeeded?.()) this.ackPending++
      const h = e.handlers.loadSetup
      if (h) await this.runHandler(`${e.idstr}/${e.instanceId} loadSetup`, () => h.call(e.handlers))
    }
  }

  async cleanup(): Promise<void> {
    for (const e of this.reg.entries()) {
      try {
        await e.handlers.loadCleanup?.()
      } catch {
        // Cleanup failures must not hide the load's own outcome.
      }
    }
  }

  async command(c: Command): Promise<void> {
    const seen = this.result.commands.find(x => x.cmd === c.cmd)
    if (seen) {
      seen.count++
      seen.bytes += c.data.length
    } else {
      this.result.commands.push({ cmd: c.cmd, name: c.name, count: 1, bytes: c.data.length })
    }
    switch (c.cmd) {
      case MigCmd.OPEN_RETURN_PATH:
        await this.maybeAck()
        break
      case MigCmd.SWITCHOVER_START:
        for (const e of this.reg.entries()) {
          const h = e.handlers.switchoverStart
          if (h) await this.runHandler(`${e.idstr}/${e.instanceId} switchoverStart`, () => h.call(e.handlers))
        }
        break
      case MigCmd.PING:
        if (c.data.readUInt32BE(0) === CANCEL_PING) {
          throw new MigrationCancelledError('the source cancelled the migration', { offset: this.f.bytesRead })
        }
        break
      default:
        if (!this.opts.onCommand) {
          throw new BadCommandError(`command ${c.name} is not supported by this loader`, { section: 'command', offset: this.f.bytesRead })
        }
    }
    if (this.opts.onCommand) await this.runHandler(`command ${c.name}`, () => this.opts.onCommand!(c))
  }

  async main(): Promise<void> {
    for (;;) {
      const at = this.f.bytesRead
      await need(this.f, 1, undefined, 'section type')
      const type = this.f.u8()
      switch (type) {
        case QEMU_VM_SECTION_START:
        case QEMU_VM_SECTION_FULL: {
          const s = await readSectionStart(this.f)
          const name = `${s.idstr}/${s.instanceId} (id ${s.sectionId})`
          const entry = this.reg.find(s.idstr, s.instanceId)
          if (!entry) throw new UnknownIdstrError(`unknown savevm section or instance '${s.idstr}' ${s.instanceId}`, { section: name, offset: at })
          if (s.versionId > entry.versionId) {
            throw new VersionTooNewError(`section version ${s.versionId} is newer than the ${entry.versionId} supported`, { section: name, offset: at })
          }
          if (!this.bySection.has(s.sectionId) && this.bySection.size >= MAX_SECTIONS_IN_FLIGHT) {
            throw new UnknownSectionIdError(`more than ${MAX_SECTIONS_IN_FLIGHT} distinct section ids`, { section: name, offset: at })
          }
          this.bySection.set(s.sectionId, { entry, versionId: s.versionId, name })
          await this.loadSection(entry, type, s.sectionId, s.versionId, name)
          this.result.sections++
          break
        }
        case QEMU_VM_SECTION_PART:
        case QEMU_VM_SECTION_END: {
          const id = await readSectionId(this.f)
          const known = this.bySection.get(id)
          if (!known) throw new UnknownSectionIdError(`unknown savevm section ${id}`, { section: `id ${id}`, offset: at })
          await this.loadSection(known.entry, type, id, known.versionId, known.name)
          this.result.sections++
          break
        }
        case QEMU_VM_COMMAND:
          await this.command(await readCommand(this.f))
          break
        case QEMU_VM_EOF:
          return
        default:
          throw new UnknownSectionTypeError(`unknown section type 0x${type.toString(16).padStart(2, '0')}`, { offset: at })
      }
    }
  }

  /**
   * After EOF: every section this side needs arrived, and every entry that
   * loaded accepts what it got (loadVerify). Before anything may start.
   */
  async verify(): Promise<void> {
    const loaded = new Set([...this.bySection.values()].map(s => s.entry))
    const missing = this.reg.entries().filter(e => requiredInStream(e) && !loaded.has(e))
    if (missing.length) {
      const names = missing.map(e => `'${e.idstr}' instance ${e.instanceId}`)
      throw new MissingSectionError(`the stream ended without ${missing.length === 1 ? 'a section' : `${missing.length} sections`} this side needs: ${names.join(', ')}`, { offset: this.f.bytesRead })
    }
    for (const e of this.reg.entries()) {
      const h = e.handlers.loadVerify
      if (h && loaded.has(e)) await this.runHandler(`${e.idstr}/${e.instanceId}`, () => h.call(e.handlers))
    }
  }

  async tail(): Promise<void> {
    if (this.opts.vmdesc !== false) {
      if ((await this.f.tryFill(1)) > 0) {
        const raw = await readVmdesc(this.f, this.opts.maxVmdescLength ?? DEFAULT_MAX_VMDESC)
        let parsed: { value: unknown } | undefined
        // Parsing waits for whoever asks: a destination does not, so its downtime never pays for it.
        Object.defineProperty(this.result, 'vmdesc', {
          enumerable: true,
          get: () => (parsed ??= { value: parseVmdesc(raw) }).value,
        })
      }
    }
    const strict = this.opts.strictEnd ?? this.f.channel.kind === 'file'
    const extra = strict ? await this.f.tryFill(1) : this.f.available
    if (extra > 0) {
      throw new TrailingGarbageError(`${extra}${strict ? '+' : ''} bytes after the end of the stream`, { offset: this.f.bytesRead })
    }
  }
}

/** Load a whole migration stream into the registry's entries. */
export async function loadvm(f: MigStream, registry: SaveVMRegistry, opts: LoadOptions = {}): Promise<LoadResult> {
  const l = new Loader(f, registry, opts)
  await readHeader(f)
  if (opts.expectConfiguration !== false) await l.configuration()
  try {
    await l.setup()
    await l.main()
    await l.verify()
    await l.tail()
  } finally {
    await l.cleanup()
  }
  return l.result
}
