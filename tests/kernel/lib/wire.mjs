// A UNIX-socket relay between the migration source and destination that can
// damage the stream on the wire, to test the failure paths with the real
// driver as the judge:
//   'pass'    forwards both ways untouched;
//   'corrupt' flips the last byte of mtty's header magic in the device data
//             (the destination's driver must refuse that write);
//   'cut'     drops both connections when the magic arrives, before passing
//             it on: the destination never gets the initial data, so it can
//             never ack the switchover, and the source is still in pre-copy.
import net from 'node:net';

/** MTTY_MAGIC (samples/vfio-mdev/mtty.c) as it goes on the wire: a little-endian u64. */
export const MTTY_MAGIC = Buffer.from('4e2c3e8c89099d7e', 'hex');

/**
 * Listens on `path`, connects each client to `target`; resolves
 * { hits(), close() }. hits() counts the magics seen source -> destination;
 * `magic` is MTTY_MAGIC unless another device's header is the target.
 */
export async function relay(path, target, mode, magic = MTTY_MAGIC) {
  if (!['pass', 'corrupt', 'cut'].includes(mode)) throw new Error(`relay mode must be pass, corrupt or cut, not ${mode}`);
  let hits = 0;
  const sockets = new Set();
  const server = net.createServer((src) => {
    const dst = net.connect(target);
    for (const s of [src, dst]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { src.destroy(); dst.destroy(); });
    }
    // The magic may straddle two reads: search the last 7 bytes of the
    // previous chunk too. The match always ends in this chunk, so the byte
    // to flip (the last) has not been forwarded yet.
    let tail = Buffer.alloc(0);
    src.on('data', (chunk) => {
      const both = Buffer.concat([tail, chunk]);
      const at = both.indexOf(magic);
      if (at >= 0) {
        hits++;
        if (mode === 'cut') {
          src.destroy();
          dst.destroy();
          return;
        }
        if (mode === 'corrupt') {
          chunk = Buffer.from(chunk);
          chunk[at + magic.length - 1 - tail.length] ^= 0xff;
        }
      }
      tail = both.subarray(Math.max(0, both.length - (magic.length - 1)));
      dst.write(chunk);
    });
    dst.on('data', (chunk) => src.write(chunk));
    src.on('end', () => dst.end());
    dst.on('end', () => src.end());
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  return {
    hits: () => hits,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
