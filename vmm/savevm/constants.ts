// Numbers of QEMU's migration stream (migration/savevm.h, savevm.c).
export const QEMU_VM_FILE_MAGIC = 0x5145564d
export const QEMU_VM_FILE_VERSION_COMPAT = 0x00000002
export const QEMU_VM_FILE_VERSION = 0x00000003

export const QEMU_VM_EOF = 0x00
export const QEMU_VM_SECTION_START = 0x01
export const QEMU_VM_SECTION_PART = 0x02
export const QEMU_VM_SECTION_END = 0x03
export const QEMU_VM_SECTION_FULL = 0x04
export const QEMU_VM_SUBSECTION = 0x05
export const QEMU_VM_VMDESCRIPTION = 0x06
export const QEMU_VM_CONFIGURATION = 0x07
export const QEMU_VM_COMMAND = 0x08
export const QEMU_VM_SECTION_FOOTER = 0x7e

/** Subcommands of QEMU_VM_COMMAND (enum qemu_vm_cmd). */
export const MigCmd = {
  INVALID: 0,
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  PACKAGED: 7,
  ENABLE_COLO: 8,
  POSTCOPY_RESUME: 9,
  RECV_BITMAP: 10,
  SWITCHOVER_START: 11,
} as const
export type MigCmd = (typeof MigCmd)[keyof typeof MigCmd]

/**
 * The be32 payload of the PING that ends a stream whose source cancelled the
 * migration ("CNCL"; this project's, see docs/stream-format.md). QEMU's own
 * pings carry small sequence numbers, and a QEMU destination answers any
 * PING with a PONG: nothing else it could misread, and it is only ever sent
 * in a stream that is being abandoned.
 */
export const CANCEL_PING = 0x434e434c

/** Payload length of each command, -1 when variable (mig_cmd_args). */
export const MIG_CMD_LEN: Record<number, number> = {
  [MigCmd.OPEN_RETURN_PATH]: 0,
  [MigCmd.PING]: 4,
  [MigCmd.POSTCOPY_ADVISE]: -1,
  [MigCmd.POSTCOPY_LISTEN]: 0,
  [MigCmd.POSTCOPY_RUN]: 0,
  [MigCmd.POSTCOPY_RAM_DISCARD]: -1,
  [MigCmd.PACKAGED]: 4,
  [MigCmd.ENABLE_COLO]: 0,
  [MigCmd.POSTCOPY_RESUME]: 0,
  [MigCmd.RECV_BITMAP]: -1,
  [MigCmd.SWITCHOVER_START]: 0,
}

export const MIG_CMD_NAME: Record<number, string> = Object.fromEntries(
  Object.entries(MigCmd).map(([k, v]) => [v, k]),
)

/** Ordering hints after QEMU's MigrationPriority: higher values are saved (and loaded) first. */
export const MigPriority = {
  DEFAULT: 0,
  IOMMU: 1,
  PCI_BUS: 2,
  VIRTIO_MEM: 3,
  GICV3_ITS: 4,
  GICV3: 5,
  MAX: 6,
} as const
