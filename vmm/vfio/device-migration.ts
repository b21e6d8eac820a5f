// One VFIO device's part in a migration: QEMU's hw/vfio/migration.c over the
// native Device/DataFd, with every device state change going through one
// chokepoint, setState(new, recover).
import type { DataFd, Device, LoadFramesResult } from '../../native/index.js'
import type { MigStream } from '../stream/stream.js'
import type { LoadHandlerContext, PendingSize, SaveVMHandlers } from '../savevm/registry.js'
import type { ChangeStateHandler, RunState } from '../runstate/index.js'
import { typedEmitter } from '../core/events.js'
import {
  DATA_BUFFER_SIZE, FEATURE_DMA_LOGGING_START, FEATURE_OP_SET, MIG_P2P, MIG_PRE_COPY, MIG_STOP_COPY,
  UNKNOWN_STOP_COPY_SIZE, VFIO_MIG_FLAG_DEV_CONFIG_STATE, VFIO_MIG_FLAG_DEV_DATA_STATE,
  VFIO_MIG_FLAG_DEV_INIT_DATA_SENT, VFIO_MIG_FLAG_DEV_SETUP_STATE, VFIO_MIG_FLAG_END_OF_STATE, markerName,
} from './markers.js'
import { trace, tracing } from './trace.js'
import { VmmError } from '../core/errors.js'

export type DeviceState = Awaited<ReturnType<Device['getState']>>

/** Errors of the VFIO migration layer carry the errno name of their cause. */
export class VfioMigrationError extends VmmError {
  readonly code: string
  constructor(message: string, code: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'VfioMigrationError'
    this.code = code
  }
}

/** A device whose reset failed: its state is unknown, the VM must not run on. */
export class VfioDeviceBrokenError extends VfioMigrationError {
  constructor(device: string, cause: unknown) {
    super(`${device}: device reset failed, device state unknown: ${errText(cause)}`, 'EIO', { cause })
    this.name = 'VfioDeviceBrokenError'
  }
}

export interface VfioDeviceConfigHooks {
  /** Bytes of the device's config space etc., saved in the FULL section (QEMU's vfio_save_config). */
  save?(): Uint8Array | Promise<Uint8Array>
  /** Restore what `save` produced. */
  load?(data: Buffer): void | Promise<void>
}

export interface VfioDeviceMigrationOptions {
  /** Section idstr (QEMU: "<device path>/vfio"). Default: `${device.name}/vfio`. */
  idstr?: string
  /** Device config space hooks. */
  config?: VfioDeviceConfigHooks
  /** Whether the migration uses switchover-ack (read at save/load time). */
  switchoverAck?: () => boolean
  /** Called when the device cannot be brought to a known state (reset failed). */
  onBroken?: (err: VfioDeviceBrokenError) => void | Promise<void>
  /** Largest block read from the data fd at once (default 1 MiB, QEMU's). */
  blockSize?: number
  /**
   * false moves device data with read()/write() even where the data fd would
   * take splice. A kernel VFIO data fd has no splice, so it always goes that
   * way; this makes an emulated device's pipe do the same (to measure that
   * path). Default true: splice where the kernel allows it.
   */
  allowSplice?: boolean
}

/** Where a device ended after a failed incoming migration (VfioDeviceMigration.abortIncoming). */
export interface IncomingDeviceOutcome {
  device: string
  state: DeviceState
  outcome: 'recovered' | 'reset' | 'broken'
}

export type VfioDeviceEvents = {
  'state-change': (e: { device: string; from: DeviceState; to: DeviceState; recover?: DeviceState | 'ERROR' }) => void
  reset: (e: { device: string; reason: string }) => void
  broken: (e: { device: string; error: VfioDeviceBrokenError }) => void
}

export interface VfioDeviceStats {
  /** Device state bytes written into migration streams. */
  bytesSaved: number
  /** Device state bytes written into the device from streams. */
  bytesLoaded: number
  /** Bytes saved while the VM was running (pre-copy). */
  precopyBytes: number
  /** Bytes saved with the VM stopped (stop-copy). */
  stopCopyBytes: number
  stateChanges: number
  resets: number
}

function errText(e: unknown): string {
  const err = e as { code?: string; message?: string }
  return err?.message ?? String(e)
}

function errCode(e: unknown): string {
  return (e as { code?: string })?.code ?? 'EIO'
}

const isPrecopy = (s: DeviceState) => s === 'PRE_COPY' || s === 'PRE_COPY_P2P'

/**
 * Longest a native frame loop waits on the channel: the migration's link
 * timeout (MigStream.linkTimeoutMs), or this where it has none, so that a
 * stalled peer fails the step instead of hanging it.
 */
const IDLE_TIMEOUT_MS = 100_000
const idleTimeoutMs = (f: MigStream) => (f.linkTimeoutMs > 0 ? f.linkTimeoutMs : IDLE_TIMEOUT_MS)
/** Payload per native load step; the destination's stream position (its reported progress) moves between steps. */
const LOAD_STEP = 8 << 20

/**
 * Realize the migration side of a VFIO device (QEMU's vfio_migration_realize):
 * probe the MIGRATION feature and DMA logging. A device without migration v2
 * gets a blocker with the reason instead of an exception, so the VMM can still
 * run it and `migrate` refuses with that reason.
 */
export async function realizeVfioMigration(device: Device, opts: VfioDeviceMigrationOptions = {}): Promise<VfioDeviceMigration> {
  let flags = 0
  let blocker: string | undefined
  try {
    flags = await device.migrationFlags()
    if (!(flags & MIG_STOP_COPY)) blocker = `${device.name}: device does not support STOP_COPY (flags 0x${flags.toString(16)})`
  } catch (e) {
    blocker = errCode(e) === 'ENOTTY'
      ? `${device.name}: VFIO migration v2 is not supported by this device's driver`
      : `${device.name}: migration couldn't be initialized: ${errText(e)}`
  }
  let dmaLogging = false
  if (!blocker) {
    try {
      dmaLogging = await device.probe(FEATURE_DMA_LOGGING_START, FEATURE_OP_SET)
    } catch {
      dmaLogging = false
    }
  }
  return new VfioDeviceMigration(device, flags, dmaLogging, blocker, opts)
}

export class VfioDeviceMigration extends typedEmitter<VfioDeviceEvents>() {
  readonly idstr: string
  readonly stats: VfioDeviceStats = { bytesSaved: 0, bytesLoaded: 0, precopyBytes: 0, stopCopyBytes: 0, stateChanges: 0, resets: 0 }
  private state: DeviceState = 'RUNNING'
  private dataFd: DataFd | null = null
  private precopyInit = 0
  private precopyDirty = 0
  /**
   * The last PRECOPY_INFO failed and the device has not said ENOMSG since:
   * the initial data may not all be out, whatever the counters say.
   */
  private precopyUnknown = false
  /** stats.resets when loading began: a reset since then lost the image. */
  private resetsAtLoadSetup = 0
  private initialDataSent = false
  private blockSize: number
  private readonly allowSplice: boolean
  private buffers: Buffer[] = []
  private broken: VfioDeviceBrokenError | null = null

  /** Use realizeVfioMigration(). */
  constructor(
    readonly device: Device,
    readonly flags: number,
    /** The device can log its own DMA writes (VFIO_DEVICE_FEATURE_DMA_LOGGING_*). */
    readonly dmaLogging: boolean,
    /** Why this device cannot migrate, if it cannot. */
    readonly blocker: string | undefined,
    private readonly opts: VfioDeviceMigrationOptions = {},
  ) {
    super()
    this.idstr = opts.idstr ?? `${device.name}/vfio`
    const bs = opts.blockSize ?? DATA_BUFFER_SIZE
    if (!Number.isSafeInteger(bs) || bs < 4096 || bs > 64 << 20) throw new RangeError(`${device.name}: blockSize ${bs} outside 4 KiB..64 MiB`)
    this.blockSize = bs
    this.allowSplice = opts.allowSplice ?? true
  }

  get name(): string {
    return this.device.name
  }
  get deviceState(): DeviceState {
    return this.state
  }
  get hasP2p(): boolean {
    return (this.flags & MIG_P2P) !== 0
  }
  get hasPrecopy(): boolean {
    return (this.flags & MIG_PRE_COPY) !== 0
  }
  get isBroken(): boolean {
    return this.broken !== null
  }

  // ---- the chokepoint ------------------------------------------------------

  /**
   * Move the device to `next`. On failure: go to `recover`; if that fails too,
   * or `recover` is ERROR, reset the device (it is then RUNNING); only if the
   * reset fails is the device declared broken (onBroken, 'broken' event).
   * Always throws on failure, whatever was recovered, so the caller aborts.
   */
  async setState(next: DeviceState, recover: DeviceState): Promise<void> {
    if (this.broken) throw this.broken
    const from = this.state
    let fd: DataFd | null
    try {
      fd = await this.device.setState(next)
    } catch (e) {
      trace(() => ({ event: 'set-state', device: this.name, from, to: next, recover, ok: false, error: errText(e) }))
      const why = `${this.name}: failed to set device state ${from} -> ${next}: ${errText(e)}`
      await this.recoverFrom(recover, why)
      throw new VfioMigrationError(`${why}; device now ${this.state}`, errCode(e), { cause: e })
    }
    this.changed(from, next, recover)
    if (fd) {
      if (this.dataFd) {
        // A second fd while one is held: the device was reset underneath us and
        // the transfer we were doing is gone (QEMU: "data_fd out of sync"),
        // and with it whatever the device held.
        await fd.close().catch(() => undefined)
        this.stats.resets++
        this.emit('reset', { device: this.name, reason: 'the device reset itself (a new data fd while one was held)' })
        throw new VfioMigrationError(`${this.name}: data fd out of sync (the device was reset during the transfer)`, 'EBADF')
      }
      this.dataFd = fd
    }
  }

  /** setState with ERROR as recover: on failure, reset. */
  setStateOrReset(next: DeviceState): Promise<void> {
    return this.setState(next, 'ERROR')
  }

  private changed(from: DeviceState, to: DeviceState, recover?: DeviceState | 'ERROR'): void {
    this.state = to
    this.stats.stateChanges++
    trace(() => ({ event: 'set-state', device: this.name, from, to, recover: recover ?? '-', ok: true }))
    this.emit('state-change', { device: this.name, from, to, recover })
  }

  private async recoverFrom(recover: DeviceState, why: string): Promise<void> {
    // A failed multi-arc move may have stopped anywhere on its path: ask.
    let at: DeviceState = 'ERROR'
    try {
      at = await this.device.getState()
    } catch {
      at = 'ERROR'
    }
    if (at !== this.state) this.changed(this.state, at)
    if (recover !== 'ERROR' && at !== 'ERROR') {
      if (at === recover) return
      try {
        const fd = await this.device.setState(recover)
        // A recover move never opens a transfer we want: close what it gave.
        if (fd) await fd.close().catch(() => undefined)
        this.changed(at, recover)
        if (!recover.startsWith('PRE_COPY') && recover !== 'STOP_COPY') await this.closeDataFd()
        return
      } catch {
        // fall through to reset
      }
    }
    await this.resetDevice(why)
  }

  private async resetDevice(reason: string): Promise<void> {
    await this.closeDataFd()
    try {
      await this.device.reset()
    } catch (e) {
      this.broken = new VfioDeviceBrokenError(this.name, e)
      trace(() => ({ event: 'reset', device: this.name, reason, ok: false }))
      this.emit('broken', { device: this.name, error: this.broken })
      await this.opts.onBroken?.(this.broken)
      throw this.broken
    }
    this.stats.resets++
    trace(() => ({ event: 'reset', device: this.name, reason, ok: true }))
    this.emit('reset', { device: this.name, reason })
    this.changed(this.state, 'RUNNING')
  }

  private async closeDataFd(): Promise<void> {
    const fd = this.dataFd
    this.dataFd = null
    if (fd) await fd.close().catch(() => undefined)
  }

  private requireDataFd(what: string): DataFd {
    if (!this.dataFd) throw new VfioMigrationError(`${this.name}: ${what} without a data fd (device ${this.state})`, 'EBADF')
    return this.dataFd
  }

  // ---- sizes ---------------------------------------------------------------

  private async queryStopCopySize(): Promise<number> {
    try {
      const n = Number(await this.device.migDataSize())
      return Number.isFinite(n) ? n : UNKNOWN_STOP_COPY_SIZE
    } catch {
      return UNKNOWN_STOP_COPY_SIZE
    }
  }

  private async queryPrecopy(): Promise<void> {
    this.precopyInit = 0
    this.precopyDirty = 0
    if (!this.dataFd) return
    try {
      const p = await this.dataFd.precopyInfo()
      this.precopyInit = Number(p.initialBytes)
      this.precopyDirty = Number(p.dirtyBytes)
      this.precopyUnknown = false
    } catch (e) {
      // Sizes unknown: 0 for the estimate (the exact query still has
      // MIG_DATA_SIZE), but not "initial data sent" for switchover-ack.
      this.precopyUnknown = true
      trace(() => ({ event: 'precopy-info', device: this.name, ok: false, error: errText(e) }))
    }
  }

  private accountBlock(size: number): void {
    if (size === 0) {
      // The device has nothing more for now: its initial data is out.
      this.precopyInit = 0
      this.precopyDirty = 0
      this.precopyUnknown = false
      return
    }
    const fromInit = Math.min(this.precopyInit, size)
    this.precopyInit -= fromInit
    this.precopyDirty -= Math.min(this.precopyDirty, size - fromInit)
  }

  // ---- the data path -------------------------------------------------------

  private buffer(i: number): Buffer {
    return (this.buffers[i] ??= Buffer.allocUnsafe(this.blockSize))
  }

  /**
   * Move device data into the stream until the fd has nothing more (0 or
   * ENOMSG), or, for a pre-copy `round`, until exactly `round.limit` bytes
   * (the last block is cut short) or the stream's rate limit, checked after
   * every block. Over a socket the frames go fd to fd in native code
   * (pumpFrames); otherwise each block goes to the channel by reference
   * (writev), never through the stream's buffer, and two buffers alternate:
   * the next block is read from the device while the previous one is being
   * written.
   */
  private async pump(f: MigStream, onBlock: (n: number) => void, round?: { limit: number }): Promise<number> {
    const fd = this.requireDataFd('save')
    const more = (sent: number) => round === undefined || (sent < round.limit && !f.rateLimitExceeded())
    const room = (sent: number) => (round === undefined ? this.blockSize : Math.min(this.blockSize, round.limit - sent))
    const direct = await this.pumpDirect(f, fd, more, onBlock, round === undefined ? null : room)
    if (direct !== null) return direct
    let sent = 0
    let slot = 0
    let writing: Promise<void> | null = null
    try {
      for (;;) {
        const buf = this.buffer(slot).subarray(0, room(sent))
        const n = await this.readBlock(fd, buf)
        if (writing) await writing
        writing = null
        onBlock(n)
        if (n === 0) break
        f.putBe64(VFIO_MIG_FLAG_DEV_DATA_STATE)
        f.putBe64n(n)
        f.putBufferAsync(buf.subarray(0, n))
        sent += n
        this.countSaved(n)
        trace(() => ({ event: 'save-block', device: this.name, size: n }))
        writing = f.flush()
        slot ^= 1
        if (!more(sent)) break
      }
    } finally {
      if (writing) await writing
    }
    this.streamError(f, 'save device data')
    return sent
  }

  private countSaved(n: number): void {
    this.stats.bytesSaved += n
    if (isPrecopy(this.state)) this.stats.precopyBytes += n
    else this.stats.stopCopyBytes += n
  }

  /**
   * The native path of pump; null when the stream cannot take direct
   * writes. A budgeted round (`room`: what the next block may carry) goes one
   * block per call so the rate limit is checked where the JS path checks it;
   * otherwise one call until the end.
   */
  private async pumpDirect(f: MigStream, fd: DataFd, more: (sent: number) => boolean, onBlock: (n: number) => void, room: ((sent: number) => number) | null): Promise<number | null> {
    let sent = 0
    for (;;) {
      let failure: unknown = null
      let end = 'limit'
      const used = await f.writeDirect(async sock => {
        try {
          const maxBytes = room ? room(sent) : tracing() ? this.blockSize : Number.MAX_SAFE_INTEGER
          const r = await fd.pumpFrames(sock, { blockSize: this.blockSize, maxBytes, marker: VFIO_MIG_FLAG_DEV_DATA_STATE, idleTimeoutMs: idleTimeoutMs(f), allowSplice: this.allowSplice })
          end = r.end
          sent += r.bytes
          // accountBlock of a sum equals accountBlock of each block in turn.
          if (r.bytes > 0) onBlock(r.bytes)
          this.countSaved(r.bytes)
          // One event per call; with a listener a call moves one block (see tracing()).
          if (r.bytes > 0) trace(() => ({ event: 'save-block', device: this.name, size: r.bytes, frames: r.frames }))
          return r.bytes + 16 * r.frames
        } catch (e) {
          failure = e
          throw e
        }
      })
      if (!used) {
        if (sent === 0) return null
        break // the stream failed between calls; streamError below reports it
      }
      if (failure !== null) {
        throw new VfioMigrationError(`${this.name}: saving device state failed: ${errText(failure)}`, errCode(failure), { cause: failure })
      }
      if (end !== 'limit') {
        onBlock(0)
        break
      }
      if (!more(sent)) break
    }
    this.streamError(f, 'save device data')
    return sent
  }

  /** One read(); ENOMSG (nothing for now) is 0; EAGAIN waits for the fd, a bounded number of times. */
  private async readBlock(fd: DataFd, buf: Buffer): Promise<number> {
    for (let tries = 0; ; tries++) {
      try {
        return await fd.read(buf)
      } catch (e) {
        const code = errCode(e)
        if (code === 'ENOMSG') return 0
        if (code === 'EAGAIN' && tries < 1000) {
          await fd.poll('in', 100)
          continue
        }
        throw new VfioMigrationError(`${this.name}: reading device state failed: ${errText(e)}`, code, { cause: e })
      }
    }
  }

  private streamError(f: MigStream, what: string): void {
    const err = f.error
    if (err) throw new VfioMigrationError(`${this.name}: ${what}: stream failed: ${err.message}`, err.code ?? 'EIO', { cause: err })
  }

  // ---- save handlers (source) ---------------------------------------------

  /** The savevm handlers, bound to this device. */
  handlers(): SaveVMHandlers {
    return {
      savePrepare: () => this.savePrepare(),
      saveSetup: f => this.saveSetup(f),
      isActiveIterate: () => isPrecopy(this.state),
      saveLiveIterate: f => this.saveIterate(f),
      statePendingEstimate: () => this.pendingEstimate(),
      statePendingExact: () => this.pendingExact(),
      saveComplete: f => this.saveComplete(f),
      saveState: f => this.saveConfig(f),
      saveCleanup: () => this.saveCleanup(),
      loadSetup: () => this.loadSetup(),
      loadState: (f, ctx) => this.loadState(f, ctx),
      loadCleanup: () => this.loadCleanup(),
      switchoverAckNeeded: () => this.hasPrecopy,
    }
  }

  private savePrepare(): void {
    if (this.blocker) throw new VfioMigrationError(this.blocker, 'EOPNOTSUPP')
    if (this.broken) throw this.broken
  }

  private async saveSetup(f: MigStream): Promise<void> {
    f.putBe64(VFIO_MIG_FLAG_DEV_SETUP_STATE)
    const stopCopy = await this.queryStopCopySize()
    // Small devices do not need a 1 MiB buffer; never below a page.
    this.blockSize = Math.max(4096, Math.min(this.blockSize, stopCopy))
    this.initialDataSent = false
    if (this.hasPrecopy) {
      if (this.state === 'RUNNING') {
        await this.setState('PRE_COPY', 'RUNNING')
        await this.queryPrecopy()
      } else if (this.state !== 'STOP') {
        throw new VfioMigrationError(`${this.name}: cannot start saving in device state ${this.state}`, 'EINVAL')
      }
    }
    trace(() => ({ event: 'save-setup', device: this.name, bufferSize: this.blockSize, precopy: isPrecopy(this.state) }))
    f.putBe64(VFIO_MIG_FLAG_END_OF_STATE)
    this.streamError(f, 'save setup')
  }

  private pendingEstimate(): PendingSize {
    const bytes = isPrecopy(this.state) ? this.precopyInit + this.precopyDirty : 0
    trace(() => ({ event: 'pending', device: this.name, exact: false, bytes, initialBytes: this.precopyInit, dirtyBytes: this.precopyDirty }))
    return { precopyOnly: bytes, postcopy: 0 }
  }

  /**
   * MIG_DATA_SIZE is what STOP_COPY would still read, which already includes
   * the pre-copy data not read yet; QEMU adds the two and so counts those
   * bytes twice. Take the larger instead.
   */
  private async pendingExact(): Promise<PendingSize> {
    const stopCopySize = await this.queryStopCopySize()
    let bytes = stopCopySize
    if (isPrecopy(this.state)) {
      await this.queryPrecopy()
      bytes = Math.max(stopCopySize, this.precopyInit + this.precopyDirty)
    }
    trace(() => ({ event: 'pending', device: this.name, exact: true, bytes, stopCopySize, initialBytes: this.precopyInit, dirtyBytes: this.precopyDirty }))
    return { precopyOnly: bytes, postcopy: 0 }
  }

  /** One round: read blocks until the device has nothing now or the stream's budget is spent. */
  private async saveIterate(f: MigStream): Promise<boolean> {
    const limit = 8 * this.blockSize
    const sent = await this.pump(f, n => this.accountBlock(n), { limit })
    if (this.opts.switchoverAck?.() && this.hasPrecopy && this.precopyInit === 0 && !this.precopyUnknown && !this.initialDataSent) {
      f.putBe64(VFIO_MIG_FLAG_DEV_INIT_DATA_SENT)
      this.initialDataSent = true
    } else {
      f.putBe64(VFIO_MIG_FLAG_END_OF_STATE)
    }
    await f.flush()
    this.streamError(f, 'save iterate')
    trace(() => ({ event: 'save-iterate', device: this.name, initialBytes: this.precopyInit, dirtyBytes: this.precopyDirty, sent }))
    return this.precopyInit === 0 && this.precopyDirty === 0 && !this.precopyUnknown
  }

  private async saveComplete(f: MigStream): Promise<void> {
    // Reached with the VM stopped: device in STOP (no PRE_COPY) or STOP_COPY.
    if (this.state !== 'STOP_COPY') await this.setState('STOP_COPY', 'STOP')
    const total = await this.pump(f, () => undefined)
    f.putBe64(VFIO_MIG_FLAG_END_OF_STATE)
    await f.flush()
    this.streamError(f, 'save complete')
    trace(() => ({ event: 'save-complete', device: this.name, bytes: total }))
  }

  private async saveConfig(f: MigStream): Promise<void> {
    f.putBe64(VFIO_MIG_FLAG_DEV_CONFIG_STATE)
    const bytes = this.opts.config?.save ? await this.opts.config.save() : new Uint8Array(0)
    f.putBe32(bytes.length)
    f.putBuffer(bytes)
    f.putBe64(VFIO_MIG_FLAG_END_OF_STATE)
    this.streamError(f, 'save config')
  }

  /**
   * After success or failure. STOP_COPY -> STOP can take long, so it is done
   * here, outside the downtime. A device still in pre-copy means the migration
   * did not get to the switchover: back to RUNNING (the VM still runs).
   */
  private async saveCleanup(): Promise<void> {
    try {
      if (this.state === 'STOP_COPY') await this.setStateOrReset('STOP')
      else if (isPrecopy(this.state)) await this.setStateOrReset('RUNNING')
    } finally {
      await this.closeDataFd()
      this.precopyInit = 0
      this.precopyDirty = 0
      this.precopyUnknown = false
      this.initialDataSent = false
      this.buffers = []
      trace(() => ({ event: 'save-cleanup', device: this.name }))
    }
  }

  // ---- load handlers (destination) ----------------------------------------

  private async loadSetup(): Promise<void> {
    if (this.broken) throw this.broken
    this.resetsAtLoadSetup = this.stats.resets
    await this.setState('RESUMING', this.state)
  }

  private async loadState(f: MigStream, ctx: LoadHandlerContext): Promise<void> {
    // A marker the native frame loop already took off the stream.
    let taken: bigint | null = null
    for (;;) {
      const tag = taken ?? await f.getBe64()
      taken = null
      this.streamError(f, 'load state')
      trace(() => ({ event: 'load-tag', device: this.name, tag: markerName(tag) }))
      switch (tag) {
        case VFIO_MIG_FLAG_END_OF_STATE:
          return
        case VFIO_MIG_FLAG_DEV_CONFIG_STATE: {
          const len = await f.getBe32()
          if (len > 1 << 20) throw new VfioMigrationError(`${this.name}: config state of ${len} bytes exceeds 1 MiB`, 'EINVAL')
          const data = await f.getBuffer(len)
          this.streamError(f, 'load config')
          if (this.opts.config?.load) await this.opts.config.load(data)
          const end = await f.getBe64()
          if (end !== VFIO_MIG_FLAG_END_OF_STATE) {
            throw new VfioMigrationError(`${this.name}: config state not followed by END_OF_STATE (got ${markerName(end)})`, 'EINVAL')
          }
          return
        }
        case VFIO_MIG_FLAG_DEV_SETUP_STATE: {
          const end = await f.getBe64()
          if (end !== VFIO_MIG_FLAG_END_OF_STATE) {
            throw new VfioMigrationError(`${this.name}: SETUP_STATE not followed by END_OF_STATE (got ${markerName(end)})`, 'EINVAL')
          }
          return
        }
        case VFIO_MIG_FLAG_DEV_DATA_STATE: {
          const size = await f.getBe64n()
          this.streamError(f, 'load data size')
          if (size > 0) {
            const fd = this.requireDataFd('load')
            const ok = await f.getToFd(fd.fd!, size, { allowSplice: this.allowSplice })
            if (!ok) this.streamError(f, `writing ${size} bytes of device state`)
            this.stats.bytesLoaded += size
            trace(() => ({ event: 'load-data', device: this.name, size }))
            taken = await this.loadFramesDirect(f, fd)
          }
          break
        }
        case VFIO_MIG_FLAG_DEV_INIT_DATA_SENT: {
          if (!this.hasPrecopy || !this.opts.switchoverAck?.()) {
            throw new VfioMigrationError(`${this.name}: INIT_DATA_SENT received but switchover-ack is not in use`, 'EINVAL')
          }
          ctx.approveSwitchover()
          return
        }
        default:
          throw new VfioMigrationError(`${this.name}: unknown tag ${markerName(tag)} in device state`, 'EINVAL')
      }
    }
  }

  /**
   * The DATA_STATE frames that follow one just loaded, taken fd to fd by
   * native code in steps of LOAD_STEP bytes (so the stream's position, which
   * the destination reports as its progress, moves between steps). Resolves
   * the be64 that ended the run, already off the stream, or null when the
   * stream must go on reading (it had read ahead, or has no fd).
   */
  private async loadFramesDirect(f: MigStream, fd: DataFd): Promise<bigint | null> {
    for (;;) {
      let r: LoadFramesResult | null = null
      const used = await f.readDirect(async sock => {
        // maxBytes 1 ends the call after one frame, so a trace listener sees each.
        r = await fd.loadFrames(sock, { marker: VFIO_MIG_FLAG_DEV_DATA_STATE, maxBytes: tracing() ? 1 : LOAD_STEP, idleTimeoutMs: idleTimeoutMs(f), allowSplice: this.allowSplice })
        return r.consumed
      })
      if (!used) return null
      this.streamError(f, 'load device data')
      const { bytes, frames, end, next } = r!
      this.stats.bytesLoaded += bytes
      if (bytes > 0) trace(() => ({ event: 'load-data', device: this.name, size: bytes, frames }))
      if (end === 'marker') return next!
      // 'eof': the stream's own read reports the end where it is an error.
      if (end === 'eof') return null
    }
  }

  private async loadCleanup(): Promise<void> {
    // The fd is only needed while data arrives; RESUMING is left in
    // finishIncoming (success) or abortIncoming (failure).
    await this.closeDataFd()
    trace(() => ({ event: 'load-cleanup', device: this.name }))
  }

  /**
   * Destination, after the whole stream loaded: leave RESUMING now, so a
   * device image the driver rejects fails the migration before the source
   * lets go of its VM. On failure the device is reset.
   */
  async finishIncoming(): Promise<void> {
    if (this.state === 'RESUMING') await this.setStateOrReset('STOP')
  }

  /**
   * Destination, the migration failed (loading, or starting the VM after
   * it): leave the device stopped with the VM, or reset it. RESUMING and
   * ERROR are left by reset; any other state (a failed start's rollback may
   * leave RUNNING_P2P) goes to STOP, else reset. Says which: 'recovered'
   * (no reset since loading began; the device holds the loaded image),
   * 'reset' (power-on state: the image is gone) or 'broken' (reset failed).
   */
  async abortIncoming(): Promise<IncomingDeviceOutcome> {
    await this.closeDataFd()
    const outcome = (): IncomingDeviceOutcome => ({
      device: this.name,
      state: this.state,
      outcome: this.broken ? 'broken' : this.stats.resets > this.resetsAtLoadSetup ? 'reset' : 'recovered',
    })
    if (this.broken) return outcome()
    try {
      if (this.state === 'RESUMING' || this.state === 'ERROR') await this.resetDevice('incoming migration failed')
      else if (this.state !== 'STOP' && this.stats.resets === this.resetsAtLoadSetup) await this.setStateOrReset('STOP')
    } catch {
      // The outcome says where it ended: reset, or broken.
    }
    return outcome()
  }

  // ---- run-state notifiers -------------------------------------------------

  /**
   * The VM change-state handler (QEMU's vfio_vmstate_change[_prepare]). The
   * prepare pass (P2P devices only) quiesces every device's outgoing DMA
   * before any device stops; the main pass stops or starts it. A failure
   * leaves this device where it was (recover = current state) and is thrown,
   * so the run-state change rolls back the devices already moved.
   */
  changeStateHandler(priority = 0): ChangeStateHandler {
    return {
      name: this.idstr,
      priority,
      prepare: this.hasP2p ? (running, state) => this.onPrepare(running, state) : undefined,
      cb: (running, state) => this.onChange(running, state),
    }
  }

  private async onPrepare(running: boolean, _state: RunState): Promise<void> {
    // A broken device is left alone: the VM is being stopped because of it.
    if (this.broken) return
    let next: DeviceState | null
    if (!running) {
      // RUNNING_P2P here is a start being rolled back after this pass moved
      // the device there: no main pass follows for it, so stop it now.
      next = this.state === 'PRE_COPY' ? 'PRE_COPY_P2P' : this.state === 'RUNNING' ? 'RUNNING_P2P' : this.state === 'RUNNING_P2P' ? 'STOP' : null
    } else if (this.state === 'PRE_COPY_P2P') {
      // Rolling a failed stop back while pre-copy goes on.
      next = 'PRE_COPY'
    } else {
      next = this.state === 'RUNNING' || this.state === 'RUNNING_P2P' || this.state === 'PRE_COPY' ? null : 'RUNNING_P2P'
    }
    if (next && next !== this.state) await this.setState(next, this.state)
  }

  private async onChange(running: boolean, state: RunState): Promise<void> {
    // A broken device is left alone when the VM stops, and the VM may not run on it.
    if (this.broken) {
      if (running) throw this.broken
      return
    }
    let next: DeviceState
    if (running) {
      next = isPrecopy(this.state) ? 'PRE_COPY' : 'RUNNING'
    } else {
      next = isPrecopy(this.state) && (state === 'finish-migrate' || state === 'paused') ? 'STOP_COPY' : 'STOP'
    }
    if (next !== this.state) await this.setState(next, this.state)
  }
}
