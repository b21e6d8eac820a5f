// The source side's savevm driver: the calls the migration orchestrator makes,
// in order: prepare, header, setup, iterate (until converged), complete,
// nonIterable, finish, cleanup.
import type { MigStream } from '../stream/stream.js'
import {
  QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END, QEMU_VM_SECTION_FULL, MigCmd, CANCEL_PING,
} from './constants.js'
import { SaveError } from './errors.js'
import type { SaveVMRegistry, SaveStateEntry, PendingSize } from './registry.js'
import {
  writeHeader, writeConfiguration, writeSectionHeader, writeFooter, writeCommand, writeEof, writeVmdesc,
} from './writer.js'
import { saveState } from '../vmstate/save.js'
import type { VmdescVmsd } from '../vmstate/types.js'
import type { Configuration } from './configuration.js'

export interface SaveOptions extends Configuration {
  /** Guest page size for the vmdesc (default 4096). */
  pageSize?: number
  /** Write the trailing VMDESCRIPTION (default true). */
  vmdesc?: boolean
  /** Write the configuration section (default true). */
  sendConfiguration?: boolean
  /** The channel carries the file header (fileHeader()) already: header() starts at the configuration. */
  fileHeaderSent?: boolean
}

export interface VmdescDevice extends VmdescVmsd {
  name: string
  instance_id: number
}

export interface Vmdesc {
  configuration?: VmdescVmsd
  page_size: number
  devices: VmdescDevice[]
}

const active = (e: SaveStateEntry) => !e.handlers.isActive || e.handlers.isActive()

export class SaveVM {
  readonly vmdesc: Vmdesc

  constructor(readonly f: MigStream, readonly registry: SaveVMRegistry, readonly opts: SaveOptions) {
    this.vmdesc = { page_size: opts.pageSize ?? 4096, devices: [] }
  }

  private fail(e: SaveStateEntry, role: string, err: unknown): SaveError {
    const se = err instanceof SaveError && err.code !== 'ERR_VMSTATE_STREAM'
      ? err
      : new SaveError('ERR_SAVEVM_HANDLER', `${e.idstr}/${e.instanceId} ${role} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err })
    this.f.setError(se, `${e.idstr} ${role}`)
    return se
  }

  private checkStream(): void {
    const err = this.f.error
    if (err) throw new SaveError('ERR_SAVEVM_STREAM', `stream failed: ${err.message}`, { cause: err, errno: err.errno })
  }

  /** Every savePrepare; the first that throws vetoes the migration. */
  async prepare(): Promise<void> {
    for (const e of this.registry.entries()) {
      if (!e.handlers.savePrepare) continue
      try {
        await e.handlers.savePrepare()
      } catch (err) {
        throw new SaveError('ERR_SAVEVM_VETO', `${e.idstr}/${e.instanceId} vetoed migration: ${(err as Error)?.message ?? String(err)}`, { cause: err })
      }
    }
  }

  /** Magic, version and the configuration section. */
  async header(): Promise<void> {
    if (!this.opts.fileHeaderSent) writeHeader(this.f)
    if (this.opts.sendConfiguration !== false) {
      this.vmdesc.configuration = await writeConfiguration(this.f, this.opts)
    }
    this.checkStream()
  }

  /** A START section for every active entry with saveSetup. */
  async setup(): Promise<void> {
    for (const e of this.registry.entries()) {
      if (!e.handlers.saveSetup || !active(e)) continue
      writeSectionHeader(this.f, QEMU_VM_SECTION_START, e.sectionId, e.idstr, e.instanceId, e.versionId)
      try {
        await e.handlers.saveSetup(this.f)
      } catch (err) {
        throw this.fail(e, 'saveSetup', err)
      }
      writeFooter(this.f, e.sectionId)
      await this.f.maybeFlush()
      this.checkStream()
    }
    await this.f.flush()
    this.checkStream()
  }

  /**
   * One round of PART sections over the live entries. Resolves true when every
   * entry reports it has nothing left. Stops early (false) once the bandwidth
   * budget of the window is spent, like QEMU.
   */
  async iterate(): Promise<boolean> {
    let allDone = true
    for (const e of this.registry.entries()) {
      const h = e.handlers
      if (!h.saveLiveIterate || !active(e)) continue
      if (h.isActiveIterate && !h.isActiveIterate()) continue
      if (this.f.rateLimitExceeded()) {
        allDone = false
        break
      }
      writeSectionHeader(this.f, QEMU_VM_SECTION_PART, e.sectionId)
      let done: boolean
      try {
        done = await h.saveLiveIterate(this.f)
      } catch (err) {
        throw this.fail(e, 'saveLiveIterate', err)
      }
      writeFooter(this.f, e.sectionId)
      if (!done) allDone = false
      await this.f.maybeFlush()
      this.checkStream()
    }
    await this.f.flush()
    this.checkStream()
    return allDone
  }

  /** Sum of statePendingEstimate over active entries. */
  pendingEstimate(): PendingSize {
    const sum = { precopyOnly: 0, postcopy: 0 }
    for (const e of this.registry.entries()) {
      if (!e.handlers.statePendingEstimate || !active(e)) continue
      const p = e.handlers.statePendingEstimate()
      sum.precopyOnly += p.precopyOnly
      sum.postcopy += p.postcopy
    }
    return sum
  }

  /** Sum of statePendingExact (falling back to the estimate) over active entries. */
  async pendingExact(): Promise<PendingSize> {
    const sum = { precopyOnly: 0, postcopy: 0 }
    for (const e of this.registry.entries()) {
      const h = e.handlers
      if (!active(e)) continue
      const p = h.statePendingExact ? await h.statePendingExact() : h.statePendingEstimate?.()
      if (!p) continue
      sum.precopyOnly += p.precopyOnly
      sum.postcopy += p.postcopy
    }
    return sum
  }

  /** Tell the destination that switchover begins (MIG_CMD_SWITCHOVER_START). */
  async switchoverStart(): Promise<void> {
    await this.command(MigCmd.SWITCHOVER_START)
  }

  async command(cmd: number, data?: Uint8Array): Promise<void> {
    writeCommand(this.f, cmd, data)
    await this.f.flush()
    this.checkStream()
  }

  /**
   * End an abandoned stream at a section boundary with the cancel marker
   * (PING CANCEL_PING), so that the destination reports a cancel rather
   * than a truncated stream. Only between sections, after header().
   */
  async cancelled(): Promise<void> {
    const data = Buffer.alloc(4)
    data.writeUInt32BE(CANCEL_PING)
    await this.command(MigCmd.PING, data)
  }

  /** END sections: the last of every live entry's state, with the VM stopped. */
  async complete(): Promise<void> {
    for (const e of this.registry.entries()) {
      if (!e.handlers.saveComplete || !active(e)) continue
      writeSectionHeader(this.f, QEMU_VM_SECTION_END, e.sectionId)
      try {
        await e.handlers.saveComplete(this.f)
      } catch (err) {
        throw this.fail(e, 'saveComplete', err)
      }
      writeFooter(this.f, e.sectionId)
      await this.f.maybeFlush()
      this.checkStream()
    }
    await this.f.flush()
    this.checkStream()
  }

  /** FULL sections for entries with a vmsd or saveState, described in the vmdesc. */
  async nonIterable(): Promise<void> {
    for (const e of this.registry.entries()) {
      if (!e.vmsd && !e.handlers.saveState) continue
      if (e.vmsd?.needed && !e.vmsd.needed(e.state!)) continue
      writeSectionHeader(this.f, QEMU_VM_SECTION_FULL, e.sectionId, e.idstr, e.instanceId, e.versionId)
      let d: VmdescVmsd
      try {
        if (e.vmsd) {
          d = await saveState(this.f, e.vmsd, e.state!)
        } else {
          const before = this.f.transferred
          await e.handlers.saveState!(this.f)
          const size = this.f.transferred - before
          // What QEMU writes for state saved without a vmsd.
          d = { size, fields: [{ name: 'data', size, type: 'buffer' }] } as unknown as VmdescVmsd
        }
      } catch (err) {
        throw this.fail(e, 'saveState', err)
      }
      writeFooter(this.f, e.sectionId)
      this.vmdesc.devices.push({ name: e.idstr, instance_id: e.instanceId, ...d })
      await this.f.maybeFlush()
      this.checkStream()
    }
    await this.f.flush()
    this.checkStream()
  }

  /** EOF and, unless disabled, the VMDESCRIPTION; then flush. */
  async finish(): Promise<void> {
    writeEof(this.f)
    if (this.opts.vmdesc !== false) writeVmdesc(this.f, this.vmdesc)
    await this.f.flush()
    this.checkStream()
  }

  /** saveCleanup on every entry, always; resolves the errors it met. */
  async cleanup(): Promise<Error[]> {
    const errors: Error[] = []
    for (const e of this.registry.entries()) {
      if (!e.handlers.saveCleanup) continue
      try {
        await e.handlers.saveCleanup()
      } catch (err) {
        errors.push(err as Error)
      }
    }
    return errors
  }

  /** Whole non-live save: header, setup, iterate until done, complete, FULL sections, EOF. */
  async saveAll(maxRounds = 1 << 20): Promise<void> {
    await this.prepare()
    await this.header()
    await this.setup()
    for (let i = 0; i < maxRounds && !(await this.iterate()); i++) await this.f.throttle()
    await this.complete()
    await this.nonIterable()
    await this.finish()
  }
}
