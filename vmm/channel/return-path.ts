// The return path: small messages from the destination back to the source
// over the same duplex channel (QEMU's MIG_RP_MSG_*: be16 type, be16 length,
// data). RESUME_OK is this project's addition: the destination reports that
// the guest runs again and how long loading took.
import type { MigStream } from '../stream/stream.js'
import { StreamError } from '../stream/errors.js'

export const RpMsg = {
  INVALID: 0,
  SHUT: 1,
  PONG: 2,
  REQ_PAGES_ID: 3,
  REQ_PAGES: 4,
  RECV_BITMAP: 5,
  RESUME_ACK: 6,
  SWITCHOVER_ACK: 7,
  /**
   * Project extension: be64 load time in microseconds, be64 resume time
   * (Unix ms), then be64 microseconds the destination's own verification
   * held the start back (absent from 16-byte messages of older destinations).
   */
  RESUME_OK: 0x100,
  /** Project extension: why the destination failed, UTF-8, sent before SHUT. */
  FAIL_REASON: 0x101,
  /** Project extension: be64 bytes of the stream the destination has loaded so far. */
  LOAD_PROGRESS: 0x102,
  /**
   * Project extension (the handover): everything is loaded and checked, the
   * guest is not started; waiting for the source's GO. No data. RESUME_OK is
   * then the handover's STARTED.
   */
  READY: 0x103,
  /**
   * Project extension: be64 microseconds the destination expects to spend
   * between the stream's end and READY on checks of its own (the microVM's
   * digests), sent once early in the migration, so the source's downtime
   * budget leaves room for them instead of giving the whole limit to data.
   */
  SWITCHOVER_COST: 0x104,
} as const

/** Largest message accepted; QEMU's are far smaller. */
export const RP_MAX_LEN = 4096

export interface RpMessage {
  type: number
  data: Buffer
}

export interface ResumeTiming {
  loadTimeUs: number
  resumedAtMs: number
  /** Destination's verification before the guest ran, microseconds (0 when it did none or did not say). */
  verificationUs?: number
  /**
   * The destination's CLOCK_MONOTONIC (process.hrtime) when its guest ran,
   * ns; 0n when not said. Only a peer on the same host shares that clock.
   */
  startedMonoNs?: bigint
}

export class ReturnPathWriter {
  constructor(readonly f: MigStream) {}

  private async send(type: number, data: Uint8Array = Buffer.alloc(0)): Promise<void> {
    this.f.putBe16(type)
    this.f.putBe16(data.length)
    this.f.putBuffer(data)
    await this.f.flush()
    if (this.f.error) throw this.f.error
  }

  shut(errno: number): Promise<void> {
    const b = Buffer.alloc(4)
    b.writeUInt32BE(errno >>> 0)
    return this.send(RpMsg.SHUT, b)
  }

  pong(value: number): Promise<void> {
    const b = Buffer.alloc(4)
    b.writeUInt32BE(value >>> 0)
    return this.send(RpMsg.PONG, b)
  }

  switchoverAck(): Promise<void> {
    return this.send(RpMsg.SWITCHOVER_ACK)
  }

  ready(): Promise<void> {
    return this.send(RpMsg.READY)
  }

  resumeAck(value: number): Promise<void> {
    const b = Buffer.alloc(4)
    b.writeUInt32BE(value >>> 0)
    return this.send(RpMsg.RESUME_ACK, b)
  }

  /** The destination's error in words, so the source can say more than an errno. */
  failReason(text: string): Promise<void> {
    let b = Buffer.from(text, 'utf8')
    if (b.length > RP_MAX_LEN) b = b.subarray(0, RP_MAX_LEN)
    return this.send(RpMsg.FAIL_REASON, b)
  }

  loadProgress(bytes: number): Promise<void> {
    const b = Buffer.alloc(8)
    b.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(bytes))))
    return this.send(RpMsg.LOAD_PROGRESS, b)
  }

  switchoverCost(us: number): Promise<void> {
    const b = Buffer.alloc(8)
    b.writeBigUInt64BE(BigInt(Math.max(0, Math.round(us))))
    return this.send(RpMsg.SWITCHOVER_COST, b)
  }

  resumeOk(t: ResumeTiming): Promise<void> {
    const b = Buffer.alloc(32)
    b.writeBigUInt64BE(BigInt(Math.max(0, Math.round(t.loadTimeUs))), 0)
    b.writeBigUInt64BE(BigInt(Math.max(0, Math.round(t.resumedAtMs))), 8)
    b.writeBigUInt64BE(BigInt(Math.max(0, Math.round(t.verificationUs ?? 0))), 16)
    b.writeBigUInt64BE(t.startedMonoNs !== undefined && t.startedMonoNs > 0n ? t.startedMonoNs : 0n, 24)
    return this.send(RpMsg.RESUME_OK, b)
  }
}

export class ReturnPathReader {
  constructor(readonly f: MigStream) {}

  /** The next message, or null when the destination closed the path. */
  async next(): Promise<RpMessage | null> {
    const have = await this.f.tryFill(4)
    if (this.f.error) throw this.f.error
    if (have === 0) return null
    if (!(await this.f.fill(4))) throw this.f.error!
    const type = this.f.be16()
    const len = this.f.be16()
    if (type === RpMsg.INVALID || len > RP_MAX_LEN) {
      const e = new StreamError('EINVAL', `return path: bad message type ${type} length ${len} at offset ${this.f.bytesRead - 4}`)
      this.f.setError(e)
      throw e
    }
    if (!(await this.f.fill(len))) throw this.f.error!
    return { type, data: this.f.bytes(len) }
  }

  static resumeTiming(m: RpMessage): ResumeTiming {
    // 16 and 24 bytes: what earlier versions of ours sent.
    if (m.type !== RpMsg.RESUME_OK || (m.data.length !== 16 && m.data.length !== 24 && m.data.length !== 32)) throw new StreamError('EINVAL', 'not a RESUME_OK message')
    return {
      loadTimeUs: Number(m.data.readBigUInt64BE(0)),
      resumedAtMs: Number(m.data.readBigUInt64BE(8)),
      verificationUs: m.data.length >= 24 ? Number(m.data.readBigUInt64BE(16)) : 0,
      startedMonoNs: m.data.length >= 32 ? m.data.readBigUInt64BE(24) : 0n,
    }
  }
}
