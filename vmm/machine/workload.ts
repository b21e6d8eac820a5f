// The guest program's memory contract, shared by both vCPUs. The numbers
// mirror crates/kvm-core/src/layout.rs (the tests compare them with
// native.kvmLayout()); the algorithm mirrors crates/kvm-core/guest/workload.S.
import { constants } from 'node:os'
import { VmmError } from '../core/errors.js'

export const PAGE_SIZE = 4096
export const RAM_ALIGN = 2 * 1024 * 1024
/**
 * At most 4 GiB (the largest Buffer Node makes). The KVM vCPU puts the first
 * 3 GiB at guest-physical 0 and the rest above a 1 GiB hole that holds its
 * exit page (kvm-core layout.rs); RAM offsets, which is all this side sees,
 * are contiguous either way.
 */
export const MAX_RAM = 4 * 1024 * 1024 * 1024
export const CODE_ADDR = 0x8000
export const CTL_ADDR = 0x9000
export const CTL_PAGE = CTL_ADDR / PAGE_SIZE
export const FIRST_DATA_PAGE = 16

/** Byte offsets inside the control block. */
export const CTL = {
  counter: 0x08, // u64: iterations completed
  checksum: 0x10, // u32: sum mod 2^32 of every u32 in the data region
  rng: 0x14, // u32: xorshift32 state
  cursor: 0x18, // u32: next page index within the region
  regionStart: 0x20,
  regionPages: 0x24,
  pagesPerIter: 0x28,
  spin: 0x2c,
  stop: 0x30, // host sets non-zero: the guest stops at the next iteration boundary
} as const

export interface WorkloadParams {
  /** First guest page of the data region (>= FIRST_DATA_PAGE). */
  regionStart: number
  regionPages: number
  /** Pages written per iteration: with `spin`, the dirty-rate knob. */
  pagesPerIter: number
  /** Busy-loop count after each iteration. */
  spin: number
  /** xorshift32 seed, non-zero. */
  seed: number
}

export function defaultParams(ramSize: number): WorkloadParams {
  return {
    regionStart: FIRST_DATA_PAGE,
    regionPages: Math.max(1, ramSize / PAGE_SIZE - FIRST_DATA_PAGE),
    pagesPerIter: 8,
    spin: 0,
    seed: 0x12345678,
  }
}

// First name wins: EAGAIN over EWOULDBLOCK, EDEADLK over EDEADLOCK.
const ERRNO_NAMES = new Map<number, string>()
for (const [name, n] of Object.entries(constants.errno)) if (!ERRNO_NAMES.has(n)) ERRNO_NAMES.set(n, name)

export class MachineError extends VmmError {
  /** Positive errno, as the kernel would return it. */
  readonly errno: number
  /** The errno's name ('EBUSY'), as Node's own errors carry it. */
  readonly code: string
  /** For a native failure, the ioctl or call that failed ('KVM_RUN', 'Machine::start'). */
  readonly syscall?: string
  constructor(message: string, errno: number, options?: { syscall?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'MachineError'
    this.errno = errno
    this.code = ERRNO_NAMES.get(errno) ?? 'EUNKNOWN'
    if (options?.syscall !== undefined) this.syscall = options.syscall
  }
}

export const EINVAL = 22

export function validateRamSize(ramSize: number): void {
  if (!Number.isSafeInteger(ramSize) || ramSize <= 0 || ramSize % RAM_ALIGN !== 0 || ramSize > MAX_RAM) {
    throw new MachineError(`guest RAM size ${ramSize} must be a non-zero multiple of 2 MiB and at most 4 GiB`, EINVAL)
  }
}

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff

export function validateParams(p: WorkloadParams, ramSize: number): void {
  for (const k of ['regionStart', 'regionPages', 'pagesPerIter', 'spin', 'seed'] as const) {
    if (!isU32(p[k])) throw new MachineError(`workload ${k} ${String(p[k])} is not a u32`, EINVAL)
  }
  if (p.regionStart < FIRST_DATA_PAGE) {
    throw new MachineError(`workload regionStart ${p.regionStart} overlaps the fixed layout (first data page is ${FIRST_DATA_PAGE})`, EINVAL)
  }
  if (p.regionPages < 1) throw new MachineError('workload regionPages must be at least 1', EINVAL)
  if (p.regionStart + p.regionPages > ramSize / PAGE_SIZE) {
    throw new MachineError(`workload region ${p.regionStart}+${p.regionPages} pages runs past guest RAM of ${ramSize / PAGE_SIZE} pages`, EINVAL)
  }
  if (p.seed === 0) throw new MachineError('workload seed must be non-zero (xorshift32 would stay at 0)', EINVAL)
}

export function xorshift32(x: number): number {
  x ^= x << 13
  x ^= x >>> 17
  x ^= x << 5
  return x >>> 0
}

/** What the checksum must equal whenever the guest is at an iteration boundary. */
export function regionChecksum(mem: Uint8Array, regionStart: number, regionPages: number): number {
  const words = new Uint32Array(mem.buffer, mem.byteOffset + regionStart * PAGE_SIZE, (regionPages * PAGE_SIZE) / 4)
  let sum = 0
  for (let i = 0; i < words.length; i++) sum = (sum + words[i]!) | 0
  return sum >>> 0
}

function view(mem: Uint8Array): DataView {
  return new DataView(mem.buffer, mem.byteOffset, mem.byteLength)
}

export function readCtl(mem: Uint8Array, off: number): number {
  return view(mem).getUint32(CTL_ADDR + off, true)
}

export function writeCtl(mem: Uint8Array, off: number, v: number): void {
  view(mem).setUint32(CTL_ADDR + off, v >>> 0, true)
}

export function readCounter(mem: Uint8Array): bigint {
  return view(mem).getBigUint64(CTL_ADDR + CTL.counter, true)
}

/** The knobs only; counter, checksum, rng and cursor are the guest's. */
export function writeParams(mem: Uint8Array, p: WorkloadParams): void {
  writeCtl(mem, CTL.regionStart, p.regionStart)
  writeCtl(mem, CTL.regionPages, p.regionPages)
  writeCtl(mem, CTL.pagesPerIter, p.pagesPerIter)
  writeCtl(mem, CTL.spin, p.spin)
}

/** Fresh control block, as kvm-core's layout::install leaves it. */
export function installControlBlock(mem: Uint8Array, p: WorkloadParams): void {
  writeParams(mem, p)
  view(mem).setBigUint64(CTL_ADDR + CTL.counter, 0n, true)
  writeCtl(mem, CTL.checksum, regionChecksum(mem, p.regionStart, p.regionPages))
  writeCtl(mem, CTL.rng, p.seed)
  writeCtl(mem, CTL.cursor, 0)
  writeCtl(mem, CTL.stop, 0)
}

/** Pages an uninterrupted run writes, from a quiesced cursor over `iterations` iterations. */
export function expectedDirtyPages(p: Omit<WorkloadParams, 'seed'>, cursor: number, iterations: number): number[] {
  if (iterations === 0) return []
  const n = Math.min(iterations * p.pagesPerIter, p.regionPages)
  const pages = new Set<number>([CTL_PAGE])
  for (let k = 0; k < n; k++) pages.add(p.regionStart + ((cursor + k) % p.regionPages))
  return [...pages].sort((a, b) => a - b)
}
