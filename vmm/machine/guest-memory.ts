// Guest RAM as seen from TypeScript: a Uint8Array over memory the vCPU also
// writes (a KVM memfd mapping, or a SharedArrayBuffer for the software vCPU).
import { PAGE_SIZE } from './workload.js'
import { MachineError, EINVAL } from './workload.js'

export class GuestMemory {
  readonly bytes: Uint8Array
  constructor(bytes: Uint8Array) {
    if (bytes.byteLength % PAGE_SIZE !== 0) {
      throw new MachineError(`guest memory of ${bytes.byteLength} bytes is not a whole number of pages`, EINVAL)
    }
    this.bytes = bytes
  }

  get size(): number {
    return this.bytes.byteLength
  }

  get pages(): number {
    return this.bytes.byteLength / PAGE_SIZE
  }

  /** A live view of one page (no copy). */
  page(i: number): Uint8Array {
    if (!Number.isInteger(i) || i < 0 || i >= this.pages) {
      throw new MachineError(`page ${i} is outside guest memory of ${this.pages} pages`, EINVAL)
    }
    return this.bytes.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)
  }

  /** Copies a whole RAM image in (restore). */
  load(image: Uint8Array): void {
    if (image.byteLength !== this.size) {
      throw new MachineError(`RAM image of ${image.byteLength} bytes does not match guest memory of ${this.size}`, EINVAL)
    }
    this.bytes.set(image)
  }

  snapshot(): Uint8Array {
    return this.bytes.slice()
  }
}

/** Page numbers whose bit is set in a dirty bitmap (bit i%8 of byte i/8). */
export function dirtyPages(bitmap: Uint8Array): number[] {
  const out: number[] = []
  for (let i = 0; i < bitmap.length; i++) {
    const b = bitmap[i]!
    if (b === 0) continue
    for (let j = 0; j < 8; j++) if (b & (1 << j)) out.push(i * 8 + j)
  }
  return out
}
