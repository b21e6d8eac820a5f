// Dirty tracking of device DMA, chosen once per migration (the question
// QEMU's VFIO series left open, settled): the devices' own DMA logging when
// every device has it; else the IOMMU container's tracker; else none, and then
// every page mapped for DMA is dirty on every sync. Pre-copy is never skipped
// and never blocked: without a tracker RAM converges more slowly, which the
// downtime check sees, instead of a silently broken downtime promise.
import type { Container } from '../../native/index.js'
import type { DirtyBitmap } from '../core/dirty-bitmap.js'
import type { VfioDeviceMigration } from './device-migration.js'
import { trace } from './trace.js'

export type DirtyTrackerKind = 'device-dma-logging' | 'container' | 'none' | 'no-devices'

/** Guest memory a device may write by DMA, as mapped in its IOMMU. */
export interface DmaMapping {
  iova: number
  size: number
}

export interface DirtyTracker {
  readonly kind: DirtyTrackerKind
  /** Why this tracker and not a better one. */
  readonly reason: string
  start(): Promise<void>
  /** OR the pages dirtied by DMA since the last sync into `into`, and clear the log. */
  sync(into: DirtyBitmap): Promise<void>
  stop(): Promise<void>
}

const PAGE = 4096

function markMapped(into: DirtyBitmap, mappings: readonly DmaMapping[]): void {
  for (const m of mappings) into.markRange(m.iova, m.size)
}

class DeviceLoggingTracker implements DirtyTracker {
  readonly kind = 'device-dma-logging' as const
  private started: VfioDeviceMigration[] = []
  constructor(private readonly devices: readonly VfioDeviceMigration[], private readonly mappings: readonly DmaMapping[], readonly reason: string) {}

  async start(): Promise<void> {
    const ranges = this.mappings.map(m => ({ iova: BigInt(m.iova), length: BigInt(m.size) }))
    try {
      for (const d of this.devices) {
        await d.device.dmaLoggingStart(BigInt(PAGE), ranges)
        this.started.push(d)
      }
    } catch (e) {
      await this.stop()
      throw e
    }
  }

  async sync(into: DirtyBitmap): Promise<void> {
    let pages = 0
    for (const d of this.started) {
      for (const m of this.mappings) {
        try {
          const bitmap = await d.device.dmaLoggingReport(BigInt(m.iova), BigInt(m.size), BigInt(PAGE))
          into.markBitmap(m.iova, bitmap, PAGE)
        } catch {
          // The uAPI: any report error means the log can no longer be trusted.
          markMapped(into, this.mappings)
          pages = -1
        }
      }
    }
    trace(() => ({ event: 'dirty-sync', tracker: this.kind, pages }))
  }

  async stop(): Promise<void> {
    const started = this.started
    this.started = []
    for (const d of started) await d.device.dmaLoggingStop().catch(() => undefined)
  }
}

class ContainerTracker implements DirtyTracker {
  readonly kind = 'container' as const
  private running = false
  constructor(private readonly container: Container, private readonly mappings: readonly DmaMapping[], readonly reason: string) {}

  async start(): Promise<void> {
    await this.container.dirtyStart()
    this.running = true
  }

  async sync(into: DirtyBitmap): Promise<void> {
    for (const m of this.mappings) {
      try {
        const bitmap = await this.container.dirtyBitmap(BigInt(m.iova), BigInt(m.size), BigInt(PAGE))
        into.markBitmap(m.iova, bitmap, PAGE)
      } catch {
        into.markRange(m.iova, m.size)
      }
    }
    trace(() => ({ event: 'dirty-sync', tracker: this.kind, pages: -1 }))
  }

  async stop(): Promise<void> {
    if (!this.running) return
    this.running = false
    await this.container.dirtyStop().catch(() => undefined)
  }
}

class AllDirtyTracker implements DirtyTracker {
  constructor(readonly kind: 'none' | 'no-devices', private readonly mappings: readonly DmaMapping[], readonly reason: string) {}
  async start(): Promise<void> {}
  async sync(into: DirtyBitmap): Promise<void> {
    markMapped(into, this.mappings)
    trace(() => ({ event: 'dirty-sync', tracker: this.kind, pages: this.mappings.reduce((n, m) => n + Math.ceil(m.size / PAGE), 0) }))
  }
  async stop(): Promise<void> {}
}

/**
 * Pick and start the best tracker the devices and the container offer. Never
 * fails for lack of a tracker: the fallback marks every DMA-mapped page dirty.
 */
export async function startDirtyTracker(
  devices: readonly VfioDeviceMigration[],
  mappings: readonly DmaMapping[],
  container?: Container,
): Promise<DirtyTracker> {
  if (devices.length === 0) {
    return new AllDirtyTracker('no-devices', [], 'no VFIO device: device DMA dirties nothing')
  }
  const lacking = devices.filter(d => !d.dmaLogging).map(d => d.name)
  const notes: string[] = []
  if (lacking.length === 0) {
    const t = new DeviceLoggingTracker(devices, mappings, 'every device supports DMA logging')
    try {
      await t.start()
      return t
    } catch (e) {
      notes.push(`device DMA logging failed to start: ${(e as Error).message}`)
    }
  } else {
    notes.push(`no device DMA logging on ${lacking.join(', ')}`)
  }
  if (container) {
    const t = new ContainerTracker(container, mappings, `${notes.join('; ')}; using the IOMMU container's tracker`)
    try {
      await t.start()
      return t
    } catch (e) {
      notes.push(`container dirty tracking unavailable: ${(e as Error).message}`)
    }
  }
  const t = new AllDirtyTracker('none', mappings, `${notes.join('; ')}; every DMA-mapped page counts as dirty on every sync`)
  await t.start()
  return t
}
