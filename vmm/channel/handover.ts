// The handover frames: the source's go-ahead (GO) or withdrawal (ABORT),
// written on the forward channel after the stream's EOF and VMDESCRIPTION,
// once the destination reported READY on the return path. The one place
// that defines them; docs/stream-format.md "Handover frames" describes the
// bytes and docs/flows.md the protocol around them.
import type { MigStream } from '../stream/stream.js'

/** "VMHO": not a savevm section type, so a loader that reads past EOF by mistake stops at once. */
export const HANDOVER_MAGIC = 0x564d484f

export const HandoverFrame = {
  /** Start the guest: the source will not run it again on its own. */
  GO: 1,
  /** The source runs the guest again: discard what was loaded. */
  ABORT: 2,
} as const
export type HandoverFrame = (typeof HandoverFrame)[keyof typeof HandoverFrame]

/** be32 magic, be16 frame type, be16 payload length (0 for both frames). */
export const HANDOVER_FRAME_LEN = 8

/** Queue one frame and flush it. Rejects if the channel refused it. */
export async function writeHandoverFrame(f: MigStream, type: HandoverFrame): Promise<void> {
  f.putBe32(HANDOVER_MAGIC)
  f.putBe16(type)
  f.putBe16(0)
  await f.flush()
  if (f.error) throw f.error
}

export type HandoverRead =
  | { kind: 'frame'; type: HandoverFrame }
  /** The channel ended or failed before a whole frame arrived. */
  | { kind: 'closed'; why: string }
  /** Bytes that are not a handover frame. */
  | { kind: 'garbage'; why: string }

/** Read the next frame; never throws. */
export async function readHandoverFrame(f: MigStream): Promise<HandoverRead> {
  const have = await f.tryFill(HANDOVER_FRAME_LEN)
  if (have < HANDOVER_FRAME_LEN) {
    return { kind: 'closed', why: f.error ? f.error.message : have === 0 ? 'end of stream' : `end of stream after ${have} bytes of a frame` }
  }
  const magic = f.be32()
  const type = f.be16()
  const len = f.be16()
  if (magic !== HANDOVER_MAGIC || len !== 0 || (type !== HandoverFrame.GO && type !== HandoverFrame.ABORT)) {
    return { kind: 'garbage', why: `not a handover frame: magic 0x${magic.toString(16)} type ${type} length ${len}` }
  }
  return { kind: 'frame', type: type as HandoverFrame }
}
