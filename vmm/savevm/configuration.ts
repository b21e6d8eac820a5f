// The configuration section (QEMU's vmstate_configuration): the machine type
// and, when it differs from the default, the target page size in bits.
import type { VMStateDescription } from '../vmstate/types.js'

export interface Configuration {
  machine: string
  /** Sent in the configuration/target-page-bits subsection when set. */
  targetPageBits?: number
  /**
   * Capabilities both ends must agree on, sent in QEMU's
   * configuration/capabilities subsection (u32 count, then u8 length + name
   * each) so a mismatch fails at once, not halfway through.
   */
  capabilities?: string[]
}

/** Most capabilities one stream may name; QEMU has fewer than 32. */
export const MAX_CAPABILITIES = 64

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
        name: 'configuration/capabilities',
        versionId: 1,
        needed: s => Array.isArray(s.capabilities) && s.capabilities.length > 0,
        fields: [
          { name: 'caps_count', type: 'uint32' },
          {
            name: 'capabilities', type: 'struct', count: 'caps_count', maxCount: MAX_CAPABILITIES,
            vmsd: {
              name: 'capability', versionId: 1,
              fields: [{ name: 'len', type: 'uint8' }, { name: 'name', type: 'buffer', length: 'len', maxLength: 255 }],
            },
          },
        ],
      },
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
  if (c.capabilities?.length) {
    const caps = c.capabilities.map(n => Buffer.from(n, 'utf8'))
    s.caps_count = caps.length
    s.capabilities = caps.map(b => ({ len: b.length, name: b }))
  }
  return s
}

/** The capability names a loaded configuration state carries. */
export function receivedCapabilities(s: Record<string, unknown>): string[] {
  const list = s.capabilities as { name: Buffer }[] | undefined
  return (list ?? []).map(c => Buffer.from(c.name).toString('utf8'))
}
