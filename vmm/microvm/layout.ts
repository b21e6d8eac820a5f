// Where things live in the microVM's guest RAM: the fixed low pages of
// vmm/machine, the vCPU workload's hot region, cold data, and at the top the
// window the emulated device DMAs into. The DMA window is kept out of the
// workload's region because the guest's checksum covers that region and a
// device writing into it would break the invariant the checks rely on.
import { FIRST_DATA_PAGE, PAGE_SIZE, validateRamSize, type WorkloadParams, defaultParams } from '../machine/index.js'

export interface MicroVmLayout {
  ramSize: number
  pages: number
  /** First page and size (pages) of the region the vCPU workload dirties. */
  workload: WorkloadParams
  /** Guest-physical address and size of the DMA window (0 bytes without a device). */
  dmaBase: number
  dmaSize: number
  /** Pages between the workload region and the DMA window: cold, filled once. */
  coldFirst: number
  coldPages: number
}

export const DEFAULT_WORKING_SET = 8 << 20
const MIN_DMA_WINDOW = 1 << 20

export function planLayout(ramSize: number, opts: { workingSet?: number; workload?: Partial<WorkloadParams>; dma: boolean }): MicroVmLayout {
  validateRamSize(ramSize)
  const pages = ramSize / PAGE_SIZE
  const dmaPages = opts.dma ? Math.max(MIN_DMA_WINDOW, ramSize / 16) / PAGE_SIZE : 0
  const room = pages - FIRST_DATA_PAGE - dmaPages
  if (room < 1) throw new RangeError(`guest RAM of ${ramSize} bytes leaves no room for the workload next to the DMA window`)
  const ws = opts.workingSet ?? DEFAULT_WORKING_SET
  if (!Number.isSafeInteger(ws) || ws < PAGE_SIZE) throw new RangeError(`working set ${ws} must be at least one page`)
  const base = defaultParams(ramSize)
  const workload: WorkloadParams = {
    ...base,
    regionStart: FIRST_DATA_PAGE,
    regionPages: Math.min(room, Math.floor(ws / PAGE_SIZE)),
    ...opts.workload,
  }
  const end = workload.regionStart + workload.regionPages
  if (end > pages - dmaPages) {
    throw new RangeError(`workload region ${workload.regionStart}+${workload.regionPages} pages overlaps the DMA window at page ${pages - dmaPages}`)
  }
  return {
    ramSize,
    pages,
    workload,
    dmaBase: (pages - dmaPages) * PAGE_SIZE,
    dmaSize: dmaPages * PAGE_SIZE,
    coldFirst: end,
    coldPages: pages - dmaPages - end,
  }
}

/**
 * Cold pages get distinct non-zero content (three of four pages) so the RAM
 * migration moves real data, and zero pages remain for its zero-page path.
 */
export function fillCold(mem: Uint8Array, l: MicroVmLayout, seed: number): void {
  const words = new Uint32Array(mem.buffer, mem.byteOffset, mem.byteLength / 4)
  const per = PAGE_SIZE / 4
  for (let p = l.coldFirst; p < l.coldFirst + l.coldPages; p++) {
    if ((p & 3) === 3) continue
    words.fill((Math.imul(p, 0x9e3779b1) ^ seed) >>> 0 || 1, p * per, (p + 1) * per)
  }
}
