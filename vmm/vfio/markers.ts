// The delimiters QEMU writes inside a VFIO device's section (hw/vfio/migration.c):
// 0xffffffff, then 0xef10 ("emulated function IO"), then a 16-bit code. Keeping
// QEMU's values keeps our streams decodable by tools that know QEMU's layout.
export const VFIO_MIG_FLAG_END_OF_STATE = 0xffffffffef100001n
export const VFIO_MIG_FLAG_DEV_CONFIG_STATE = 0xffffffffef100002n
export const VFIO_MIG_FLAG_DEV_SETUP_STATE = 0xffffffffef100003n
export const VFIO_MIG_FLAG_DEV_DATA_STATE = 0xffffffffef100004n
export const VFIO_MIG_FLAG_DEV_INIT_DATA_SENT = 0xffffffffef100005n

const NAMES = new Map<bigint, string>([
  [VFIO_MIG_FLAG_END_OF_STATE, 'END_OF_STATE'],
  [VFIO_MIG_FLAG_DEV_CONFIG_STATE, 'DEV_CONFIG_STATE'],
  [VFIO_MIG_FLAG_DEV_SETUP_STATE, 'DEV_SETUP_STATE'],
  [VFIO_MIG_FLAG_DEV_DATA_STATE, 'DEV_DATA_STATE'],
  [VFIO_MIG_FLAG_DEV_INIT_DATA_SENT, 'DEV_INIT_DATA_SENT'],
])

export function markerName(v: bigint): string {
  return NAMES.get(v) ?? `unknown 0x${v.toString(16)}`
}

/** VFIO_MIGRATION_* bits of the MIGRATION feature. */
export const MIG_STOP_COPY = 1
export const MIG_P2P = 2
export const MIG_PRE_COPY = 4

/** Feature indices used here (include/uapi/linux/vfio.h). */
export const FEATURE_DMA_LOGGING_START = 6
export const FEATURE_OP_SET = 1 << 17

/** What QEMU reports as pending when MIG_DATA_SIZE fails, so the VM is never stopped too early. */
export const UNKNOWN_STOP_COPY_SIZE = 100 * 1024 ** 3

/** Largest device data block read per call (QEMU's VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE). */
export const DATA_BUFFER_SIZE = 1 << 20
