// The software vCPU: same workload, same layout and interface as the KVM one,
// for machines without /dev/kvm. RAM is a SharedArrayBuffer; dirty tracking is a
// shared bitmap the worker sets and syncDirtyLog() reads-and-clears atomically.
import { Worker } from 'node:worker_threads'
import { GuestMemory } from './guest-memory.js'
import { SOFT_WORKER_ROLE, type SoftStopped, type SoftWorkerData } from './soft-worker.js'
import type { StopInfo, Vcpu, VcpuState } from './vcpu.js'
import { WorkloadVcpu } from './workload-vcpu.js'
import { DEFAULT_QUIESCE_MS } from './vcpu.js'
import {
  CTL, CTL_ADDR, EINVAL, MachineError, PAGE_SIZE, defaultParams, installControlBlock,
  validateParams, validateRamSize, writeCtl, type WorkloadParams,
} from './workload.js'

const EBUSY = 16
const ENODEV = 19
const ETIMEDOUT = 110
const EIO = 5
const MAGIC = 'SOFTCPU1'
const STATE_BYTES = 8 + 5 * 4

// The worker's module beside this one: soft-worker.js once built, soft-worker.ts
// when the sources run under a TypeScript loader (tests), which the worker
// inherits with the process's execArgv.
const WORKER_URL = new URL(import.meta.url.endsWith('.ts') ? './soft-worker.ts' : './soft-worker.js', import.meta.url)

export class SoftVcpu extends WorkloadVcpu implements Vcpu {
  readonly kind = 'soft' as const
  readonly memory: GuestMemory
  readonly ramBacking = "a SharedArrayBuffer of the soft vCPU, which no other process can map"
  private readonly worker: Worker
  private readonly dirty: Int32Array
  private readonly ctrl: Int32Array
  private readonly pages: number
  private regs = [0, 0, 0, 0, 0]
  protected p: WorkloadParams
  private isRunning = false
  private lastStop: StopInfo = { reason: 'paused' }
  private waiters: Array<(s: StopInfo) => void> = []
  private dead: MachineError | undefined

  private constructor(ramSize: number, p: WorkloadParams) {
    super()
    const mem = new SharedArrayBuffer(ramSize)
    this.pages = ramSize / PAGE_SIZE
    const dirty = new SharedArrayBuffer(Math.ceil(this.pages / 32) * 4)
    const ctrl = new SharedArrayBuffer(16)
    this.memory = new GuestMemory(new Uint8Array(mem))
    this.dirty = new Int32Array(dirty)
    this.ctrl = new Int32Array(ctrl)
    this.p = p
    installControlBlock(this.memory.bytes, p)
    const workerData: SoftWorkerData = { role: SOFT_WORKER_ROLE, mem, dirty, ctrl, ctlAddr: CTL_ADDR }
    this.worker = new Worker(WORKER_URL, { workerData })
    this.worker.on('message', (m: SoftStopped | { type: 'ready' }) => {
      if (m.type === 'stopped') this.onStopped(m)
    })
    this.worker.on('error', (e) => this.fail(new MachineError(`soft vCPU worker failed: ${e.message}`, EIO)))
    this.worker.on('exit', () => this.fail(new MachineError('soft vCPU was destroyed', ENODEV)))
    // Only an outstanding create/pause/quiesce keeps the process alive, as with
    // the KVM vCPU whose thread does not hold the event loop either. After the
    // listeners: adding a 'message' listener re-refs the port.
    this.worker.unref()
  }

  /** Resolves once the worker runs, so start() is not delayed by thread start-up. */
  private ready(): Promise<void> {
    this.worker.ref()
    return new Promise((resolve, reject) => {
      const onMsg = (m: { type: string }) => {
        if (m.type !== 'ready') return
        this.worker.off('message', onMsg)
        this.worker.off('error', reject)
        this.worker.unref()
        resolve()
      }
      this.worker.on('message', onMsg)
      this.worker.once('error', reject)
    })
  }

  static async create(ramSize: number, params: Partial<WorkloadParams> = {}): Promise<SoftVcpu> {
    validateRamSize(ramSize)
    const p = { ...defaultParams(ramSize), ...params }
    validateParams(p, ramSize)
    const v = new SoftVcpu(ramSize, p)
    try {
      await v.ready()
    } catch (e) {
      await v.worker.terminate()
      throw new MachineError(`soft vCPU worker did not start: ${(e as Error).message}`, EIO)
    }
    return v
  }

  get running(): boolean {
    return this.isRunning
  }

  private onStopped(m: SoftStopped): void {
    this.isRunning = false
    this.regs = m.regs
    this.lastStop = m.error ? { reason: m.reason, error: m.error } : { reason: m.reason }
    this.worker.unref()
    const w = this.waiters
    this.waiters = []
    for (const f of w) f(this.lastStop)
  }

  private fail(e: MachineError): void {
    if (!this.dead) this.dead = e
    this.isRunning = false
    const w = this.waiters
    this.waiters = []
    for (const f of w) f({ reason: 'error', error: e.message })
  }

  private alive(): void {
    if (this.dead) throw this.dead
  }

  private stopped(): Promise<StopInfo> {
    if (!this.isRunning) return Promise.resolve(this.lastStop)
    this.worker.ref()
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  async start(): Promise<void> {
    this.alive()
    if (this.isRunning) throw new MachineError('vCPU is already running', EBUSY)
    Atomics.store(this.ctrl, 0, 0)
    this.isRunning = true
    this.worker.postMessage({ type: 'run', regs: this.regs })
  }

  async pause(): Promise<StopInfo> {
    this.alive()
    Atomics.store(this.ctrl, 0, 1)
    return this.stopped()
  }

  async quiesce(timeoutMs = DEFAULT_QUIESCE_MS): Promise<StopInfo> {
    this.alive()
    const mem = this.memory.bytes
    writeCtl(mem, CTL.stop, 1)
    try {
      if (!this.isRunning) await this.start()
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), timeoutMs)))
      const s = await Promise.race([this.stopped(), timeout])
      clearTimeout(timer)
      if (s === null) {
        await this.pause()
        throw new MachineError(`guest did not reach its stop point within ${timeoutMs} ms`, ETIMEDOUT)
      }
      return s
    } finally {
      writeCtl(mem, CTL.stop, 0)
    }
  }

  async getState(): Promise<VcpuState> {
    this.alive()
    if (this.isRunning) throw new MachineError('get vCPU state: vCPU is running; pause it first', EBUSY)
    const bytes = new Uint8Array(STATE_BYTES)
    bytes.set(Buffer.from(MAGIC, 'latin1'))
    const dv = new DataView(bytes.buffer)
    this.regs.forEach((r, i) => dv.setUint32(8 + i * 4, r >>> 0, true))
    return { kind: 'soft', bytes }
  }

  async setState(state: VcpuState): Promise<void> {
    this.alive()
    if (state.kind !== 'soft') throw new MachineError(`cannot load a ${state.kind} vCPU state into a soft vCPU`, EINVAL)
    if (this.isRunning) throw new MachineError('set vCPU state: vCPU is running; pause it first', EBUSY)
    const b = state.bytes
    if (b.byteLength !== STATE_BYTES || Buffer.from(b.subarray(0, 8)).toString('latin1') !== MAGIC) {
      throw new MachineError(`soft vCPU state must be ${STATE_BYTES} bytes starting with ${MAGIC}`, EINVAL)
    }
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength)
    const regs = [0, 1, 2, 3, 4].map((i) => dv.getUint32(8 + i * 4, true))
    if (regs[0]! > 3) throw new MachineError(`soft vCPU state has invalid phase ${regs[0]}`, EINVAL)
    this.regs = regs
    this.lastStop = { reason: 'paused' }
  }

  async syncDirtyLog(): Promise<Uint8Array> {
    this.alive()
    const words = new Uint32Array(this.dirty.length)
    for (let i = 0; i < words.length; i++) words[i] = Atomics.exchange(this.dirty, i, 0)
    return new Uint8Array(words.buffer, 0, Math.ceil(this.pages / 8))
  }

  async destroy(): Promise<void> {
    if (this.dead) return
    if (this.isRunning) await this.pause()
    this.dead = new MachineError('soft vCPU was destroyed', ENODEV)
    await this.worker.terminate()
  }
}
