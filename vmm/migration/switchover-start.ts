// Whether the source sends MIG_CMD_SWITCHOVER_START before the switchover.
// QEMU added the command in 10.0 and sends it only where the destination
// knows it: its migration property send-switchover-start is on, and turned
// off for machine types before 10.0 (hw_compat_9_2). A QEMU before 10.0 fails
// the whole load on it ("MIG_CMD 0xb unknown"). Our own destination calls the
// `switchoverStart` handlers with it and has no other use for it.
import type { SaveVMRegistry } from '../savevm/registry.js'

export type SwitchoverStartSetting = boolean | 'auto'

/** The version of a QEMU machine type ("pc-i440fx-7.2" -> [7, 2]); undefined for unversioned names. */
export function qemuMachineVersion(machine: string): [number, number] | undefined {
  const m = /-(\d+)\.(\d+)$/.exec(machine)
  return m ? [Number(m[1]), Number(m[2])] : undefined
}

/**
 * 'auto': for a versioned QEMU machine type, QEMU's own rule (sent from 10.0
 * on); for any other machine type (this project's, or QEMU's unversioned
 * ones such as "microvm", whose QEMU version the name does not tell), only
 * when a registered entry has a `switchoverStart` handler, the one thing the
 * command is for at our destination.
 */
export function sendsSwitchoverStart(setting: SwitchoverStartSetting, machine: string, registry: SaveVMRegistry): boolean {
  if (setting !== 'auto') return setting
  const v = qemuMachineVersion(machine)
  if (v) return v[0] >= 10
  return registry.entries().some(e => typeof e.handlers.switchoverStart === 'function')
}
