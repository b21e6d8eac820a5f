// The configuration section (QEMU's vmstate_configuration): the machine type
// and, when it differs from the default, the target page size in bits.
import type { VMStateDescription } from '../vmstate/types.js'

export interface Configuration {
  machine: string
  /** Sent in the configuration/target-page-bits subsection when set. */
  targetPageBits?: number
}

export function configurationVmsd(): VMStateDescription {
  return {
    name: 'configuration',
    versionId: 1,
    fields: [
      { name: 'len', type: 'uint32' },
      { name: 'name', type: 'buffer', length: 'len', maxLength: 255 },
    ],
    subsections: [
      {
        name: 'configuration/target-page-bits',
        versionId: 1,
        needed: s => s.target_page_bits !== undefined,
        fields: [{ name: 'target_page_bits', type: 'uint32' }],
      },
    ],
  }
}

export function configurationState(c: Configuration): Record<string, unknown> {
  const name = Buffer.from(c.machine, 'utf8')
  const s: Record<string, unknown> = { len: name.length, name }
  if (c.targetPageBits !== undefined) s.target_page_bits = c.targetPageBits
  return s
}
